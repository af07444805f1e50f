"""Tiny, seeded, random causal LMs built from a config: no downloads, milliseconds per forward."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

torch.set_num_threads(1)

VOCAB = 16
EOS = 1


def tiny_llama(seed: int, vocab: int = VOCAB, sharpness: float = 4.0, layers: int = 2) -> LlamaForCausalLM:
    """A random Llama whose next-token distributions are peaked enough to make acceptance vary.

    sharpness scales the output head: random heads give near-uniform distributions otherwise.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model


def tiny_subset_draft(seed: int, token_ids: list[int], sharpness: float = 4.0) -> LlamaForCausalLM:
    """A random one-layer draft over a subset of the target's ids (see mtad.runtime.vocabulary)."""
    model = tiny_llama(seed, vocab=len(token_ids) + 1, sharpness=sharpness, layers=1)
    model.config.mtad_token_ids = list(token_ids)
    return model


def tiny_gpt2(seed: int, vocab: int = VOCAB) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=EOS
    )
    return GPT2LMHeadModel(config).eval()


def tiny_tokenizer(vocab: int = VOCAB) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over words w0..w{vocab-1}: token id i <-> text 'w{i}'."""
    words = {"<s>": 0, "</s>": EOS} | {f"w{i}": i for i in range(2, vocab)}
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<s>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<s>"
    )
    return tokenizer


def assert_counts(tokens: torch.Tensor, expected: torch.Tensor) -> None:
    """Per-bin check of observed token counts against probabilities: |count - mean| <= 6 sigma + 5,
    and never a zero-probability token. A correct sampler leaves the band with probability < 1e-8."""
    counts = torch.bincount(tokens, minlength=len(expected)).double()
    mean = tokens.numel() * expected.double()
    sigma = torch.sqrt(mean * (1 - expected.double()))
    assert torch.all((counts - mean).abs() <= 6 * sigma + 5), (counts, mean)
    assert torch.all(counts[expected == 0] == 0), "a zero-probability token was emitted"


def assert_first_two_follow_p(rounds, p_root: torch.Tensor, p_child: torch.Tensor, generator) -> None:
    """`rounds`: (node tokens, verdict) of independent tree rounds after one root context. The first
    and second committed tokens follow p_root and p_root x p_child exactly (`assert_counts`). When a
    round commits one token only (every child rejected), its second would come from the next round:
    drawn here from the exact p_child(. | first), as a correct next round does."""
    firsts, pairs, vocab = [], [], len(p_root)
    for tokens, verdict in rounds:
        committed = [tokens[i] for i in verdict.path()] + [int(verdict.next_token[0])]
        if len(committed) == 1:
            committed.append(int(torch.multinomial(p_child[committed[0]], 1, generator=generator)))
        firsts.append(committed[0])
        pairs.append(committed[0] * vocab + committed[1])
    assert_counts(torch.tensor(firsts), p_root)
    assert_counts(torch.tensor(pairs), (p_root.unsqueeze(1) * p_child).flatten())


@pytest.fixture(scope="session")
def pair_dirs(tmp_path_factory) -> tuple[str, str]:
    """A tiny target and draft saved as model directories with a tokenizer, as a user has them."""
    root = tmp_path_factory.mktemp("pair")
    tokenizer = tiny_tokenizer()
    for name, model in (("target", tiny_llama(seed=0)), ("draft", tiny_llama(seed=1, layers=1))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return str(root / "target"), str(root / "draft")


@pytest.fixture(scope="session")
def target():
    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def draft():
    return tiny_llama(seed=1, layers=1)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def prompt():
    return [0, 5, 7, 3]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for every Ray test of the session, joined in-process; its
    workers can import the test modules (functions they run are pickled by reference)."""
    import logging
    import os
    from pathlib import Path

    import ray

    tests = str(Path(__file__).resolve().parent)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests, saved) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


def use_costs(monkeypatch, given, asked: list | None = None) -> None:
    """gamma "auto" reads `given` (an `mtad.decoding.pricing.Costs`) instead of measured forwards,
    so a test's rounds do not depend on the machine's load; `asked` collects the batch sizes read."""
    from mtad.decoding import pricing

    def read(target, draft, rows=1):
        if asked is not None:
            asked.append(rows)
        return given

    monkeypatch.setattr(pricing, "price", lambda *args, **kwargs: None)
    monkeypatch.setattr(pricing, "costs", read)
