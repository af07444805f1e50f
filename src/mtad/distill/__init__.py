"""Draft training by knowledge distillation: `distill(target_dir, out_dir, TrainSettings, DataSettings)`.

The result is a plain transformers model directory (loadable with `AutoModelForCausalLM`) that
shares the target's tokenizer. See `train.py` for the output layout and resume contract,
`data.py` for how training text is made, `student.py` for the draft's shape.
"""

from mtad.distill.data import DataSettings, DistillDataError
from mtad.distill.train import OutputDirError, TrainSettings, distill, load_run_settings

__all__ = [
    "DataSettings",
    "DistillDataError",
    "OutputDirError",
    "TrainSettings",
    "distill",
    "load_run_settings",
]
