"""What each weight format does to the target's numbers: perplexity of held-out answers and the
distance of its next-token distributions from the float32 model's.

    python benchmarks/fast_path_numerics.py                     # default target, 6 answers of 96 tokens
    python benchmarks/fast_path_numerics.py --variants off,auto,int8,int4 --answers 8

The answers are the float32 target's own (`ar`, T 1, top-k 10, top-p 0.9) to the last MT-Bench
questions, which no draft trained or was tuned on. Each variant (`off`: dtype auto, dense; `auto`:
the fast path; `int8`/`int4`: quantized; `float32`: the reference) scores them in one forward pass
(`mtad.models.scoring.target_logprobs`, unwarped, T 1). Printed per variant: token-weighted
perplexity, its ratio to float32's, the mean total-variation distance of the next-token
distributions from float32's over every answer position, and how often the argmax agrees.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

import mtad
from mtad.bench.datasets import load_dataset
from mtad.bench.scoring import encode_record
from mtad.models.default_pair import default_target_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import machine_line  # noqa: E402

LOADS = {
    "float32": {"fast": "off", "dtype": "float32"},
    "off": {"fast": "off"},
    "auto": {"fast": "auto"},
    "int8": {"fast": "off", "quantize": "int8"},
    "int4": {"fast": "off", "quantize": "int4"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="default: the built-in pair's target")
    parser.add_argument("--variants", default="off,auto,int8,int4", help=f"comma list of {', '.join(LOADS)}")
    parser.add_argument("--answers", type=int, default=6, help="MT-Bench questions, from the last one back")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    path = args.target or default_target_path()
    reference = mtad.load_model(path, **LOADS["float32"])
    records = load_dataset("mtbench")[-args.answers :]
    prompts = [encode_record(record, reference.tokenizer) for record in records]
    answers = [
        mtad.generate(
            reference.model, None, prompt, method="ar", temperature=1.0, top_k=10, top_p=0.9,
            max_new_tokens=args.max_new_tokens, seed=i,
        ).tokens
        for i, prompt in enumerate(prompts)
    ]  # fmt: skip
    exact = [_distributions(reference.model, p, a) for p, a in zip(prompts, answers, strict=True)]
    reference_nll = _nll(exact, answers)
    print(machine_line(reference.model))
    tokens = sum(map(len, answers))
    print(f"{len(answers)} answers, {tokens} tokens; float32 perplexity {math.exp(reference_nll):.3f}")
    print("| variant | weights | dtype | perplexity | x float32 | mean TV from float32 | argmax agrees |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        loaded = mtad.load_model(path, **LOADS[name])
        probs = [_distributions(loaded.model, p, a) for p, a in zip(prompts, answers, strict=True)]
        nll = _nll(probs, answers)
        tv = torch.cat([0.5 * (q - r).abs().sum(-1) for q, r in zip(probs, exact, strict=True)])
        agree = torch.cat([q.argmax(-1) == r.argmax(-1) for q, r in zip(probs, exact, strict=True)])
        cells = [name, loaded.fast_path.weights, str(loaded.model.dtype), f"{math.exp(nll):.3f}"]
        cells += [f"{math.exp(nll - reference_nll):.4f}", f"{float(tv.mean()):.4f}"]
        cells += [f"{float(agree.float().mean()):.3f}"]
        print("| " + " | ".join(cells) + " |")


@torch.inference_mode()
def _distributions(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """The unwarped next-token distributions at every answer position [len(answer), vocab]."""
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids, logits_to_keep=len(answer) + 1).logits[0, :-1].float()
    return torch.softmax(logits, dim=-1)


def _nll(probs: list[torch.Tensor], answers: list[list[int]]) -> float:
    picked = torch.cat(
        [p.gather(-1, torch.tensor(a).unsqueeze(-1)).squeeze(-1) for p, a in zip(probs, answers, strict=True)]
    )
    return float(-picked.clamp_min(1e-30).log().mean())


if __name__ == "__main__":
    main()
