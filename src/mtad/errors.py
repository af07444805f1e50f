"""The one error family users catch: every bad input raises a subclass of `MtadError`."""


class MtadError(ValueError):
    """A clear, one-line complaint about a value the caller gave, naming what is allowed."""


class ConfigError(MtadError):
    """A decoding or sampling setting is outside its allowed range.

    `setting` names it (e.g. "gamma", "tree", "seed", "prompt") where one setting is at fault, so
    a caller (the server) can point at the field without parsing the message.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ModelLoadError(MtadError):
    """A model or tokenizer could not be found or loaded."""


class VocabularyMismatchError(MtadError):
    """Draft and target do not share one token-to-id map."""


class ContextLengthError(MtadError):
    """Prompt plus requested tokens do not fit the model's context window."""


class NumericalError(MtadError):
    """A model produced NaN or +inf logits; decoding cannot continue honestly."""


class DatasetError(MtadError):
    """A benchmark data file or directory is missing, malformed, or names an unknown dataset."""


class DraftMismatchError(MtadError):
    """A draft was trained for another target (e.g. a feature draft reading another model's states)."""


class ClusterError(MtadError):
    """Ray is missing, a Ray cluster cannot be reached, or it has no room for the workers asked for."""


class MissingExtraError(MtadError):
    """A command needs an optional part of mtad that is not installed (`mtad.extras`)."""
