"""The prepared GPU check: mtad's CUDA path, GPU timings and NVML energy in one short run.

    python benchmarks/gpu_check.py --device cuda --out "$OUT"          # on a lent GPU machine
    python benchmarks/gpu_check.py --device cpu --quick --out runs/gpu  # tiny sizes, any machine

(docs/gpu.md has the exact device-tool call, which carries transformers >= 5.20 as a wheel.)

A GPU machine is lent rarely, by chance, for a few minutes, with no network and no package
downloads, and the default target is too big to travel. So everything here is built from
configs: seeded random-weight Llama models (a ~1B target and a ~100M draft sharing a vocabulary
by default; sizes are flags), made on the device itself. Random weights say nothing about
acceptance, so timings use scripted drafts instead: `accept-all` is the draft model with its
logits replaced by the target's greedy continuation (acceptance ~1 at the draft's real cost) and
`accept-none` is the same draft unscripted (acceptance ~0 at temperature 0). Between them they
bound the engine's cost on the device.

Sections run in order, each caught on its own (an error is recorded and the run goes on), and
the JSON and Markdown reports are rewritten after every section, so a run killed by its time
limit still leaves what it measured. Once `--budget-s` is spent, the remaining sections are
reported as skipped. The exit status is 1 when a correctness check failed or raised, else 0.
`docs/gpu.md` says what each check means.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# The GPU machine has no mtad installed and nothing can be installed there: use this checkout's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import mtad  # noqa: E402
from mtad.bench.energy import NullMeter, detect_energy_meter  # noqa: E402
from mtad.config import SamplingConfig  # noqa: E402
from mtad.decoding.methods import get_method  # noqa: E402
from mtad.decoding.sampling import warp  # noqa: E402
from mtad.models import output_width  # noqa: E402
from mtad.runtime.cache import CachedModel  # noqa: E402
from mtad.runtime.precision import DTYPES  # noqa: E402

NO_EOS = {"eos_token_id": []}

# A mismatch against the target's argmax is a rounding tie, not a bug, when the chosen token's
# logit is within this fraction of the row's logit spread (std) of the best one. Random weights
# give top-2 gaps of ~0.2 std at a 32k vocabulary, so bf16 flips some of them by rounding alone.
TIE_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.03}
CACHE_TOLERANCE = 1e-3  # float32: cached vs fresh logits, relative to the largest |logit|
CHI_VOCAB, CHI_PROMPT, CHI_SIGNIFICANCE = 8, [0, 3, 5], 1e-3
CHI_WARP = {"temperature": 1.0, "top_k": 6, "top_p": 0.95}
FORWARD_SHAPES = ((1, 1), (1, 2), (1, 5), (1, 9), (1, 17), (4, 1))  # (rows, new tokens) after the prefix

FULL = {
    "vocab": 32000, "target_hidden": 2048, "target_layers": 16, "draft_hidden": 768, "draft_layers": 6,
    "head_dim": 64, "prefix": 512, "prompt_len": 64, "max_new_tokens": 128, "check_tokens": 64,
    "repeats": 3, "forward_repeats": 10, "chi_runs": 1000, "budget_s": 420.0, "sharpness": 1.0,
}  # fmt: skip
QUICK = {
    "vocab": 64, "target_hidden": 64, "target_layers": 2, "draft_hidden": 32, "draft_layers": 1,
    "head_dim": 16, "prefix": 32, "prompt_len": 8, "max_new_tokens": 16, "check_tokens": 24,
    "repeats": 2, "forward_repeats": 3, "chi_runs": 300, "budget_s": 120.0, "sharpness": 4.0,
}  # fmt: skip


# --- models ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A Llama-family shape; heads, KV heads (grouped-query, 4:1) and MLP width follow from hidden."""

    vocab: int
    hidden: int
    layers: int
    head_dim: int

    def config(self, context: int) -> LlamaConfig:
        heads = max(1, self.hidden // self.head_dim)
        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=4 * self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 4),
            head_dim=self.head_dim,
            max_position_embeddings=context,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        )


class ScriptedDraft(LlamaForCausalLM):
    """A draft that runs its full forward (its real cost) and then predicts a scripted token.

    `script[i]` is the token wanted at absolute position i (prompt included); positions in
    `wrong_at` get a different token on purpose, so a chain is accepted exactly up to them and
    every accepted length is reached at temperature 0. Trees pass `position_ids`, chains and beams
    use the cache length. Positions past the script keep the model's own logits.
    """

    script: torch.Tensor | None = None

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kwargs):
        start = cache.get_seq_length() if cache is not None else 0
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            **kwargs,
        )
        if self.script is None:
            return out
        logits = out.logits  # [rows, kept, vocab]
        if position_ids is None:
            position_ids = torch.arange(start, start + input_ids.shape[1], device=logits.device)[None]
        predicted = (position_ids[:, -logits.shape[1] :] + 1).to(logits.device)  # [rows | 1, kept]
        known = predicted < len(self.script)
        wanted = self.script[predicted.clamp(max=len(self.script) - 1)]
        scripted = torch.full_like(logits, -30.0).scatter_(
            -1, wanted.expand(logits.shape[:2])[..., None], 30.0
        )
        logits.copy_(torch.where(known[..., None], scripted, logits))
        return out


def set_script(draft: ScriptedDraft, sequence: list[int], wrong_at: set[int] | None = frozenset()) -> None:
    """Script `sequence` (wrong on purpose at `wrong_at`); None unscripts: an unrelated random draft."""
    if wrong_at is None:
        draft.script = None
        return
    vocab = draft.config.vocab_size
    tokens = [(t + 1) % vocab if i in wrong_at else t for i, t in enumerate(sequence)]
    draft.script = torch.tensor(tokens, device=draft.device)


def build_llama(
    shape: Shape,
    seed: int,
    device: str,
    dtype: torch.dtype,
    context: int,
    sharpness: float = 1.0,
    cls: type[LlamaForCausalLM] = LlamaForCausalLM,
) -> LlamaForCausalLM:
    """Seeded random weights, initialised on `device` itself: a 1B model is made in a second on a
    GPU, where building it on the CPU and copying would take longer than the checks.
    `sharpness` scales the output head so small test models have peaked distributions."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(shape.config(context)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model.to(dtype)


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_prompt(length: int, vocab: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [0] + torch.randint(2, vocab, (length - 1,), generator=generator).tolist()


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the run: sections, budget, reports -----------------------------------------------------


class Run:
    """Sections under one time budget; results are written after every section."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        self.started = time.perf_counter()
        self.cuda = torch.device(args.device).type == "cuda"
        self.data: dict = {
            "script": "benchmarks/gpu_check.py",
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "environment": environment(args.device),
            "models": {},
            "checks": [],
            "forward_timings": [],
            "method_timings": [],
            "energy": {},
            "sections": [],
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def over_budget(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def section(self, name: str, body: Callable[[], None], needs_cuda: bool = False) -> None:
        start = time.perf_counter()
        record: dict = {"section": name, "status": "done", "note": ""}
        if needs_cuda and not self.cuda:
            record |= {"status": "skipped", "note": f"needs CUDA; this run's device is {self.args.device}"}
        elif self.over_budget():
            record |= {"status": "skipped", "note": f"time budget of {self.args.budget_s:.0f} s spent"}
        else:
            try:
                body()
            except Exception as error:  # record, write, go on: partial results beat none
                record |= {"status": "error", "note": describe(error), "traceback": traceback.format_exc()}
            free_memory()
        record["seconds"] = round(time.perf_counter() - start, 2)
        self.data["sections"].append(record)
        self.write()
        print(f"[{self.elapsed():6.1f} s] {name}: {record['status']} {record.get('note', '')}", flush=True)

    def check(self, name: str, body: Callable[[], dict]) -> None:
        """One correctness check; `body` returns {'status': 'pass' | 'fail', 'detail': ..., ...}."""
        try:
            result = body()
        except Exception as error:
            result = {"status": "error", "detail": describe(error), "traceback": traceback.format_exc()}
        self.data["checks"].append({"check": name} | result)
        print(f"    {result['status']:5} {name}: {result['detail']}", flush=True)

    def skip_check(self, name: str, reason: str) -> None:
        self.data["checks"].append({"check": name, "status": "skipped", "detail": reason})

    def failed(self) -> bool:
        return any(c["status"] in ("fail", "error") for c in self.data["checks"])

    def write(self) -> None:
        self.data["wall_s"] = round(self.elapsed(), 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def describe(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def environment(device: str) -> dict:
    """What the numbers were measured on: versions, the GPU, and the flags that change kernels."""
    import accelerate
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        where = torch.device(device)
        props = torch.cuda.get_device_properties(where.index or 0 if where.type == "cuda" else 0)
        info |= {
            "cuda": torch.version.cuda,
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    try:
        import pynvml  # noqa: F401  (optional: nvidia-ml-py)

        info["pynvml"] = True
    except ImportError:
        info["pynvml"] = False
    return info


# --- correctness ----------------------------------------------------------------------------


@dataclass
class Setup:
    """Sizes and lengths resolved from the preset and the flags."""

    target: Shape
    draft: Shape
    context: int
    prompt: list[int]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Setup:
        target = Shape(args.vocab, args.target_hidden, args.target_layers, args.head_dim)
        draft = Shape(args.vocab, args.draft_hidden, args.draft_layers, args.head_dim)
        context = max(2048, args.prefix + 32, args.prompt_len + args.max_new_tokens + 64)
        return cls(target, draft, context, random_prompt(args.prompt_len, args.vocab, seed=1))


def wrong_positions(prompt_len: int, tokens: int) -> set[int]:
    """Positions 0, 2, 5, 9, 14, ... after the prompt: gaps of 1, 2, 3, ... so that rounds with
    gamma 4 accept 0, 1, 2, 3 and 4 draft tokens."""
    steps = (k * (k + 3) // 2 for k in range(tokens))
    return {prompt_len + s for s in steps if s < tokens}


def argmax_mismatches(model, prompt: list[int], tokens: list[int]) -> tuple[int, float]:
    """(count, largest gap) of generated tokens that are not the target's argmax under teacher forcing.

    One forward over prompt + tokens gives every position's logits; the gap is (best logit - chosen
    logit) / the row's logit std, so a rounding tie is ~0 and a real error is ~1.
    """
    device = model.get_input_embeddings().weight.device
    with torch.inference_mode():
        ids = torch.tensor([prompt + tokens], device=device)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # [n, vocab]
    chosen = logits.gather(-1, ids[0, len(prompt) :, None].to(logits.device))[:, 0]
    gaps = (logits.max(-1).values - chosen) / logits.std(-1)
    wrong = gaps > 0
    return int(wrong.sum()), float(gaps[wrong].max()) if bool(wrong.any()) else 0.0


def greedy_equality(run: Run, setup: Setup, dtype_name: str) -> None:
    """sd at temperature 0 equals greedy, token for token, with three drafts: one scripted to
    accept everything, one scripted to fail at chosen positions (every accepted length 0..gamma),
    and an unrelated random draft (nearly nothing accepted)."""
    args, dtype = run.args, DTYPES[dtype_name]
    target = build_llama(setup.target, 0, args.device, dtype, setup.context)
    draft = build_llama(setup.draft, 1, args.device, dtype, setup.context, cls=ScriptedDraft)
    prompt, n = setup.prompt, args.check_tokens
    greedy = mtad.generate(target, None, prompt, method="greedy", max_new_tokens=n, **NO_EOS).tokens
    script = (
        prompt + mtad.generate(target, None, prompt, method="greedy", max_new_tokens=n + 8, **NO_EOS).tokens
    )
    tolerance = TIE_TOLERANCE[dtype]
    for scenario, wrong_at in (
        ("scripted all-accept", set()),
        ("scripted errors", wrong_positions(len(prompt), n)),
        ("unrelated draft", None),
    ):
        set_script(draft, script, wrong_at)
        run.check(
            f"sd T=0 == greedy, {dtype_name}, {scenario}",
            lambda: _compare_with_greedy(target, draft, prompt, greedy, n, tolerance, args.gamma),
        )


def _compare_with_greedy(target, draft, prompt, greedy, n, tolerance, gamma) -> dict:
    generation = mtad.stream(
        target, draft, prompt, method="sd", gamma=gamma, temperature=0, max_new_tokens=n, **NO_EOS
    )
    lengths = sorted({len(block.tokens) - 1 for block in generation})
    result = generation.result
    first = next((i for i, (a, b) in enumerate(zip(result.tokens, greedy, strict=True)) if a != b), None)
    wrong, gap = argmax_mismatches(target, prompt, result.tokens)
    ok = result.stats.drafted_tokens > 0 and (first is None or gap <= tolerance)
    same = "identical to greedy" if first is None else f"first differs at token {first}"
    detail = (
        f"{same}; not the target's argmax (teacher forcing): {wrong} (largest gap {gap:.3g} std, "
        f"ties up to {tolerance}); acceptance {fmt(result.stats.acceptance_rate)}; accepted lengths {lengths}"
    )
    return {
        "status": "pass" if ok else "fail",
        "detail": detail,
        "identical": first is None,
        "first_difference": first,
        "argmax_mismatches": wrong,
        "largest_gap_std": gap,
        "acceptance_rate": result.stats.acceptance_rate,
        "accepted_lengths": lengths,
    }


def exact_first_two(model, device: str) -> torch.Tensor:
    """P(t1, t2) under the warped target [vocab, vocab], from two plain forwards (no cache)."""
    config = SamplingConfig(**CHI_WARP)
    with torch.inference_mode():
        first = warp(model(input_ids=torch.tensor([CHI_PROMPT], device=device)).logits[0, -1], config)
        prefixes = torch.tensor([CHI_PROMPT + [t] for t in range(CHI_VOCAB)], device=device)
        second = warp(model(input_ids=prefixes).logits[:, -1], config)
    return (first.unsqueeze(1) * second).double().cpu()


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Goodness of fit over cells expected >= 5 (the rest merged); p from the chi-square survival
    function, which is the regularised upper incomplete gamma Q(df / 2, x / 2): no scipy needed."""
    observed, probs = counts.flatten().double(), probs.flatten()
    expected = probs / probs.sum() * observed.sum()
    big = expected >= 5
    observed = torch.cat([observed[big], observed[~big].sum()[None]])
    expected = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), statistic / 2)), df


def chi_square(run: Run, method: str) -> dict:
    """The first two tokens of a lossless method follow the exact warped target distribution."""
    args = run.args
    shape = Shape(CHI_VOCAB, 32, 2, 8)
    target = build_llama(shape, 10, args.device, torch.float32, 256, sharpness=3.0)
    draft = build_llama(Shape(CHI_VOCAB, 32, 1, 8), 11, args.device, torch.float32, 256, sharpness=3.0)
    settings = {"gamma": 2} if method == "sd" else {"tree": (2, 2)}
    counts, accepted, runs = torch.zeros(CHI_VOCAB, CHI_VOCAB), 0, 0
    for seed in range(args.chi_runs):
        if run.over_budget():
            break  # fewer runs still give a valid test, only a weaker one
        runs += 1
        result = mtad.generate(
            target,
            draft,
            CHI_PROMPT,
            method=method,
            max_new_tokens=3,
            seed=seed,
            **settings,
            **CHI_WARP,
            **NO_EOS,
        )
        counts[result.tokens[0], result.tokens[1]] += 1
        accepted += result.stats.accepted_tokens
    if runs < min(args.chi_runs, 100):
        return {"status": "skipped", "detail": f"time budget spent after {runs} runs", "runs": runs}
    probs = exact_first_two(target, args.device)
    impossible = int(counts.double().flatten()[probs.flatten() == 0].sum())
    p_value, df = chi_square_p_value(counts, probs)
    ok = p_value > CHI_SIGNIFICANCE and impossible == 0 and 0 < accepted
    cut = f" (cut from {args.chi_runs} by the time budget)" if runs < args.chi_runs else ""
    detail = (
        f"{runs} runs{cut}, vocab {CHI_VOCAB}: p = {p_value:.3g} (df {df}; a correct sampler fails "
        f"with probability {CHI_SIGNIFICANCE}), {impossible} tokens outside top-k/top-p, {accepted} accepted"
    )
    result = {"status": "pass" if ok else "fail", "detail": detail, "p_value": p_value, "runs": runs}
    return result | {"accepted": accepted}


def cache_matches_fresh(cached: CachedModel, sequence: torch.Tensor) -> float:
    """Largest |logit difference| between the incremental cache and a fresh forward, relative to the
    largest |logit| (the cache is copied, so decoding is untouched)."""
    import copy

    with torch.inference_mode():
        pending = sequence[:, cached.length :].to(cached.device)
        via_cache = cached.model(input_ids=pending, cache=copy.deepcopy(cached.cache), use_cache=True)
        fresh = cached.model(input_ids=sequence.to(cached.device)).logits[:, -1].float()
    return float((via_cache.logits[:, -1].float() - fresh).abs().max() / fresh.abs().max().clamp_min(1.0))


def caches_after_rollbacks(run: Run, setup: Setup, target, draft, method: str) -> dict:
    """After every block (chains truncated, trees pruned, beams reordered) both caches give the
    logits of a fresh forward over the committed tokens."""
    generation = mtad.stream(
        target,
        draft,
        setup.prompt,
        method=method,
        gamma=run.args.gamma,
        beam_width=run.args.beam_width,
        tree=run.args.tree,
        max_new_tokens=run.args.check_tokens,
        seed=3,
        **NO_EOS,
    )
    worst, rejections, blocks, left = 0.0, 0, 0, run.args.check_tokens
    full = len(run.args.tree) + 1 if method == "specinfer" else run.args.gamma + 1
    for block in generation:
        blocks += 1
        rejections += len(block.tokens) < min(full, left)  # a block cut by the budget is no rejection
        left -= len(block.tokens)
        for cached in (generation.target, generation.drafter):
            worst = max(worst, cache_matches_fresh(cached, generation.sequence))
    stats = generation.result.stats
    ok = worst <= CACHE_TOLERANCE and rejections > 0
    detail = (
        f"largest difference {worst:.2g} of max |logit| (allowed {CACHE_TOLERANCE}); {blocks} blocks, "
        f"{rejections} with a rejection, acceptance {fmt(stats.acceptance_rate)}"
    )
    return {"status": "pass" if ok else "fail", "detail": detail, "largest_difference": worst}


def seeded_twice(target, draft, prompt, method: str, tokens: int) -> dict:
    """Same seed, same tokens: one generator per device keeps a run replayable."""
    runs = [
        mtad.generate(target, draft, prompt, method=method, max_new_tokens=tokens, seed=7, **NO_EOS).tokens
        for _ in range(2)
    ]
    same = runs[0] == runs[1]
    detail = "same tokens" if same else f"differ: {runs[0][:8]}... vs {runs[1][:8]}..."
    return {"status": "pass" if same else "fail", "detail": detail}


def float32_pair(run: Run, setup: Setup, draft_device: str | None = None):
    """The pair for sampling checks; `--sharpness` peaks tiny models' near-uniform distributions,
    where p and q would agree so well that nothing is ever rejected."""
    sharp = run.args.sharpness
    target = build_llama(setup.target, 0, run.args.device, torch.float32, setup.context, sharp)
    draft = build_llama(setup.draft, 1, draft_device or run.args.device, torch.float32, setup.context, sharp)
    return target, draft


def caches_and_seeds(run: Run, setup: Setup) -> None:
    target, draft = float32_pair(run, setup)
    for method in ("sd", "mtad", "mmtad", "specinfer"):
        run.check(
            f"caches == fresh forward after rollbacks, {method}",
            lambda m=method: caches_after_rollbacks(run, setup, target, draft, m),
        )
    for method in ("ar", "sd", "mtad", "mmtad", "specinfer"):
        run.check(
            f"same seed, same tokens on {run.args.device}, {method}",
            lambda m=method: seeded_twice(target, draft, setup.prompt, m, run.args.check_tokens),
        )


def draft_on_cpu(run: Run, setup: Setup) -> None:
    """Target on the GPU, draft on the CPU: decodes, replays by seed, and sd T=0 equals greedy."""
    target, draft = float32_pair(run, setup, draft_device="cpu")
    tokens = min(run.args.check_tokens, 24)
    greedy = mtad.generate(
        target, None, setup.prompt, method="greedy", max_new_tokens=tokens, **NO_EOS
    ).tokens

    def sd_greedy() -> dict:
        result = mtad.generate(
            target, draft, setup.prompt, method="sd", temperature=0, max_new_tokens=tokens, **NO_EOS
        )
        same = result.tokens == greedy
        return {"status": "pass" if same else "fail", "detail": "identical to greedy" if same else "differs"}

    run.check(f"draft on cpu, target on {run.args.device}: sd T=0 == greedy", sd_greedy)
    for method in ("sd", "mtad", "mmtad", "specinfer"):
        run.check(
            f"draft on cpu, target on {run.args.device}: same seed, same tokens, {method}",
            lambda m=method: seeded_twice(target, draft, setup.prompt, m, tokens),
        )


def device_map_auto(run: Run, setup: Setup) -> None:
    """Save a random model, load it back through `mtad.load_model(device_map="auto")` (accelerate),
    and decode: greedy equals the in-memory model's, and sd runs with a draft beside it."""
    model = build_llama(setup.draft, 1, run.args.device, torch.float32, setup.context)
    tokens = min(run.args.check_tokens, 24)

    def body() -> dict:
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            # dtype given: load_model's default is the fastest native dtype, not the saved one
            loaded = mtad.load_model(folder, device_map="auto", dtype="float32").model
        mapped = getattr(loaded, "hf_device_map", None) or {}
        placement = sorted({str(d) for d in mapped.values()} or {str(p.device) for p in loaded.parameters()})
        expected = mtad.generate(model, None, setup.prompt, method="greedy", max_new_tokens=tokens, **NO_EOS)
        got = mtad.generate(loaded, None, setup.prompt, method="greedy", max_new_tokens=tokens, **NO_EOS)
        sd = mtad.generate(loaded, model, setup.prompt, method="sd", max_new_tokens=tokens, seed=0, **NO_EOS)
        same = got.tokens == expected.tokens
        ok = same and len(sd.tokens) == tokens
        detail = (
            f"hf_device_map {'set' if mapped else 'unset'}, weights on {placement}; greedy "
            f"{'equal' if same else 'differs'}; sd decoded {len(sd.tokens)} tokens"
        )
        return {"status": "pass" if ok else "fail", "detail": detail, "placement": placement}

    run.check('device_map="auto": load, greedy == in-memory model, sd decodes', body)


# --- timings and energy ---------------------------------------------------------------------


def median_ms(step: Callable[[], None], device: str, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `step` in ms, synchronised with the device before and after each call."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def forward_timings(run: Run, name: str, model, prefix_len: int) -> None:
    """One forward of `tokens` new positions for `rows` rows after a cached prefix, as a round does:
    1 token (ar, a draft step), gamma + 1 (sd verification), trees (9, 17), 4 beam rows."""
    cached = CachedModel(model, output_width(model))
    prefix = torch.tensor([random_prompt(prefix_len, model.config.vocab_size, seed=2)])
    cached.forward(prefix)
    for rows, tokens in FORWARD_SHAPES:
        if run.over_budget():
            return
        if rows != cached.cache.layers[0].keys.shape[0]:
            cached.repeat(rows)
        feed = torch.randint(2, model.config.vocab_size, (rows, tokens))

        def step(feed=feed, tokens=tokens) -> None:
            cached.forward(feed, keep=tokens)
            cached.truncate(prefix_len)

        ms = median_ms(step, run.args.device, run.args.forward_repeats)
        run.data["forward_timings"].append(
            {"model": name, "prefix": prefix_len, "rows": rows, "tokens": tokens, "ms": round(ms, 3)}
        )


def timing_models(run: Run, setup: Setup):
    """The timed pair in the timing dtype, and the draft scripted to follow the target's greedy path."""
    dtype, context = DTYPES[run.args.dtype], setup.context
    target = build_llama(setup.target, 0, run.args.device, dtype, context)
    draft = build_llama(setup.draft, 1, run.args.device, dtype, context, cls=ScriptedDraft)
    run.data["models"] = {
        "target": asdict(setup.target) | {"parameters": parameters(target), "dtype": run.args.dtype},
        "draft": asdict(setup.draft) | {"parameters": parameters(draft), "dtype": run.args.dtype},
    }
    return target, draft


def method_scenarios(methods: list[str]) -> list[tuple[str, str]]:
    """(method, draft behaviour): ar needs no draft; every drafted method runs at both bounds."""
    scenarios = []
    for method in methods:
        drafted = get_method(method).needs_draft
        scenarios += (
            [(method, kind) for kind in ("accept-all", "accept-none")] if drafted else [(method, "-")]
        )
    return scenarios


def method_timings(run: Run, setup: Setup, target, draft) -> None:
    """Tokens/s and joules/token per method at temperature 0: methods interleaved within each repeat
    (so drift hits all alike), medians over repeats. A method that raises is recorded and dropped."""
    args = run.args
    meter = energy_meter(args.device)
    run.data["energy"] = energy_info(meter)
    samples: dict[tuple[str, str], list[dict]] = {s: [] for s in method_scenarios(args.methods)}
    errors: dict[tuple[str, str], str] = {}
    scripts = accept_all_scripts(
        run, setup, target, draft, [m for m, k in samples if k == "accept-all"], errors
    )
    for repeat in range(-1, args.repeats):  # repeat -1 warms up (kernels, allocator), unrecorded
        for (method, kind), recorded in samples.items():
            if run.over_budget():
                run.data["method_timings_note"] = f"time budget spent after {max(repeat, 0)} repeats"
                break
            if (method, kind) in errors:
                continue
            set_script(draft, scripts.get(method, []), set() if kind == "accept-all" else None)
            tokens = args.max_new_tokens if repeat >= 0 else 8
            try:
                sample = timed_generation(run, setup.prompt, target, draft if kind != "-" else None, method,
                                          tokens, meter, seed=max(repeat, 0))  # fmt: skip
            except Exception as error:
                errors[(method, kind)] = describe(error)
                continue
            if repeat >= 0:
                recorded.append(sample)
    rows = [summarise(m, k, s) for (m, k), s in samples.items() if s]
    rows += [{"method": m, "draft": k, "runs": 0, "error": e} for (m, k), e in errors.items()]
    add_speed_up(rows)
    run.data["method_timings"] = rows


def accept_all_scripts(
    run: Run, setup: Setup, target, draft: ScriptedDraft, methods: list[str], errors: dict
) -> dict[str, list[int]]:
    """Per method, a script the target accepts in full: its greedy path, retaken from the method's
    own output until every drafted token is accepted (at most `--calibrations` passes).

    In bfloat16 two logits tie exactly now and then, and which one wins depends on the matmul
    shape (one token, a verified chain, a tree); one flip sends the sequence off the scripted path
    and acceptance to ~0 for the rest of the run. Rounds keep their shapes while all is accepted,
    so each pass carries the accepted prefix past the previous flip.
    """
    args, scripts, report = run.args, {}, {}
    greedy = mtad.generate(target, None, setup.prompt, method="greedy", max_new_tokens=args.max_new_tokens,
                           **NO_EOS)  # fmt: skip
    for method in methods:
        script, passes, acceptance = setup.prompt + greedy.tokens, 0, None
        try:
            while passes < args.calibrations and acceptance != 1.0 and not run.over_budget():
                set_script(draft, script)
                result = mtad.generate(target, draft, setup.prompt, method=method, temperature=0,
                                       gamma=args.gamma, beam_width=args.beam_width, tree=args.tree,
                                       max_new_tokens=args.max_new_tokens, **NO_EOS)  # fmt: skip
                passes, acceptance = passes + 1, result.stats.acceptance_rate
                script = setup.prompt + result.tokens
        except Exception as error:
            errors[(method, "accept-all")] = describe(error)
        scripts[method] = script
        report[method] = {"passes": passes, "acceptance": acceptance}
    run.data["accept_all_calibration"] = report
    return scripts


def timed_generation(
    run: Run, prompt: list[int], target, draft, method: str, tokens: int, meter, seed: int
) -> dict:
    """One generation, timed between device synchronisations, with the energy counter around it."""
    args = run.args
    synchronize(args.device)
    meter.start()
    start = time.perf_counter()
    result = mtad.generate(target, draft, prompt, method=method, temperature=0, gamma=args.gamma,
                           beam_width=args.beam_width, tree=args.tree, max_new_tokens=tokens, seed=seed,
                           **NO_EOS)  # fmt: skip
    synchronize(args.device)
    wall = time.perf_counter() - start
    energy = meter.stop()
    stats = result.stats
    return {
        "wall_s": wall, "new_tokens": stats.new_tokens, "joules": energy.joules,
        "energy_reason": energy.reason, "acceptance_rate": stats.acceptance_rate,
        "block_efficiency": stats.block_efficiency, "target_calls": stats.target_calls,
        "draft_calls": stats.draft_calls,
    }  # fmt: skip


def summarise(method: str, kind: str, samples: list[dict]) -> dict:
    def median(key: str) -> float | None:
        values = [s[key] for s in samples if s[key] is not None]
        return statistics.median(values) if values else None

    per_token_j = [
        s["joules"] / s["new_tokens"] for s in samples if s["joules"] is not None and s["new_tokens"]
    ]
    wall, tokens = median("wall_s"), median("new_tokens")
    return {
        "method": method,
        "draft": kind,
        "runs": len(samples),
        "new_tokens": tokens,
        "tokens_per_s": tokens / wall if wall else None,
        "ms_per_token": 1000 * wall / tokens if tokens else None,
        "acceptance_rate": median("acceptance_rate"),
        "block_efficiency": median("block_efficiency"),
        "target_calls": median("target_calls"),
        "draft_calls": median("draft_calls"),
        "joules_per_token": statistics.median(per_token_j) if per_token_j else None,
        "energy_note": None if per_token_j else samples[0]["energy_reason"],
    }


def add_speed_up(rows: list[dict]) -> None:
    base = next((r.get("tokens_per_s") for r in rows if r["method"] == "ar"), None)
    for row in rows:
        row["speed_up_vs_ar"] = row["tokens_per_s"] / base if base and row.get("tokens_per_s") else None


class DriverNvml:
    """The four NVML calls `NvmlMeter` makes, straight from the driver's libnvidia-ml via ctypes.

    A lent GPU machine may lack nvidia-ml-py and cannot install it, but every NVIDIA driver ships
    libnvidia-ml.so.1; this stands in for the `pynvml` module, so the project's one meter is used.
    """

    def __init__(self) -> None:
        self._lib = ctypes.CDLL("libnvidia-ml.so.1")

    def _call(self, name: str, *arguments) -> None:
        code = getattr(self._lib, name)(*arguments)
        if code != 0:  # NVML_SUCCESS
            raise RuntimeError(f"{name} returned NVML error {code}")

    def nvmlInit(self) -> None:
        self._call("nvmlInit_v2")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self._call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(handle))
        return handle

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: ctypes.c_void_p) -> int:
        millijoules = ctypes.c_ulonglong()
        self._call("nvmlDeviceGetTotalEnergyConsumption", handle, ctypes.byref(millijoules))
        return millijoules.value

    def nvmlDeviceGetName(self, handle: ctypes.c_void_p) -> str:
        name = ctypes.create_string_buffer(96)
        self._call("nvmlDeviceGetName", handle, name, ctypes.c_uint(len(name)))
        return name.value.decode(errors="replace")


def energy_meter(device: str):
    """mtad's meter for `device`; on CUDA without nvidia-ml-py, the same NVML meter through ctypes."""
    meter = detect_energy_meter(device)
    if not isinstance(meter, NullMeter) or torch.device(device).type != "cuda":
        return meter
    try:
        fallback = detect_energy_meter(device, nvml=DriverNvml())
    except OSError as error:  # no libnvidia-ml.so.1
        return NullMeter((*meter.reasons, f"NVML via ctypes: {describe(error)}"))
    if isinstance(fallback, NullMeter):
        return NullMeter(meter.reasons + fallback.reasons)
    fallback.description += " (libnvidia-ml via ctypes; nvidia-ml-py is not installed)"
    return fallback


def energy_info(meter) -> dict:
    if isinstance(meter, NullMeter):
        return {"available": False, "meter": meter.description, "reasons": list(meter.reasons)}
    return {"available": True, "meter": meter.description}


# --- the Markdown report --------------------------------------------------------------------


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


CHECK_COLUMNS = {"check": "check", "status": "status", "detail": "detail"}
MODEL_COLUMNS = {"name": "model", "vocab": "vocab", "hidden": "hidden", "layers": "layers",
                 "millions": "parameters (M)", "dtype": "dtype"}  # fmt: skip
FORWARD_COLUMNS = {"model": "model", "prefix": "prefix", "rows": "rows", "tokens": "new tokens", "ms": "ms"}
METHOD_COLUMNS = {
    "method": "method", "draft": "draft", "tokens_per_s": "tokens/s", "ms_per_token": "ms/token",
    "speed_up_vs_ar": "vs ar", "acceptance_rate": "acceptance", "block_efficiency": "block eff.",
    "joules_per_token": "J/token", "runs": "runs",
}  # fmt: skip
SECTION_COLUMNS = {"section": "section", "status": "status", "seconds": "seconds", "note": "note"}


def table(columns: dict[str, str], rows: list[dict]) -> str:
    """A Markdown table of `rows` (dicts) with `columns` (key -> header); missing values are n/a."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(key)).replace("|", "\\|") for key in columns) + " |")
    return "\n".join(lines) + "\n"


def markdown(data: dict) -> str:
    """The report a person reads: correctness first, then models, forward passes and methods."""
    env = data["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu_threads']} threads)"
    parts = [
        f"# mtad GPU check: {where}\n",
        f"{data['started_utc']}, torch {env['torch']}, transformers {env['transformers']}, device "
        f"`{env['device']}`, wall {data.get('wall_s')} s, arguments `{' '.join(data['argv'])}`\n",
        "## Correctness\n",
        table(CHECK_COLUMNS, data["checks"]),
    ]
    if data["models"]:
        models = [m | {"name": name, "millions": m["parameters"] / 1e6} for name, m in data["models"].items()]
        parts += ["## Models (random weights)\n", table(MODEL_COLUMNS, models)]
    if data["forward_timings"]:
        parts += ["## One forward after the prefix (median ms, synchronised)\n",
                  table(FORWARD_COLUMNS, data["forward_timings"])]  # fmt: skip
    if data["method_timings"]:
        parts += methods_markdown(data)
    parts += ["## Sections\n", table(SECTION_COLUMNS, data["sections"])]
    return "\n".join(parts)


def methods_markdown(data: dict) -> list[str]:
    energy = data["energy"]
    meter = energy.get("meter", "n/a")
    if not energy.get("available"):
        meter = f"n/a: {'; '.join(energy.get('reasons', [])) or 'no meter'}"
    rows = [r for r in data["method_timings"] if "error" not in r]
    notes = [f"- {r['method']} ({r['draft']}): {r['error']}" for r in data["method_timings"] if "error" in r]
    if data.get("method_timings_note"):
        notes.append(f"- {data['method_timings_note']}")
    calibration = data.get("accept_all_calibration", {})
    if calibration:
        passes = [
            f"{m} {c['passes']} pass(es), acceptance {fmt(c['acceptance'])}" for m, c in calibration.items()
        ]
        notes.append("- accept-all scripts: " + ", ".join(passes))
    parts = [f"## Methods at temperature 0 (medians; energy: {meter})\n", table(METHOD_COLUMNS, rows)]
    return parts + (["\n".join(notes) + "\n"] if notes else [])


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite runs this on CPU)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="timing dtype (default bfloat16 on CUDA)")
    parser.add_argument(
        "--check-dtypes", default="float32,bfloat16,float16", help="dtypes of the sd == greedy check"
    )
    parser.add_argument("--methods", default="ar,sd,mtad,mmtad", help="methods to time")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--tree", default="4,2,2", help="specinfer branching")
    parser.add_argument("--calibrations", type=int, default=4, help="passes to script accept-all drafts")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; --quick 1)")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated: greedy, chi-square, caches, draft-on-cpu, device-map, timings",
    )
    for name, value in FULL.items():
        kind = float if isinstance(value, float) else int
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, help=f"default {value}; --quick {QUICK[name]}"
        )
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    cuda = torch.device(args.device).type == "cuda"
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.methods = [m for m in args.methods.split(",") if m]
    args.check_dtypes = [d for d in args.check_dtypes.split(",") if d]
    args.tree = tuple(int(b) for b in args.tree.split(","))
    args.skip = sorted({s for s in args.skip.split(",") if s})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)  # tiny models only lose to thread hand-offs
    run = Run(args)
    problem = setup_problem(args.device)
    if problem:
        run.data["sections"].append({"section": "setup", "status": "error", "seconds": 0, "note": problem})
        run.write()
        print(f"cannot run: {problem}; wrote {run.out}")
        return 2
    setup = Setup.from_args(args)
    run.write()
    for key, title, body, needs_cuda in correctness_sections(run, setup):
        if key in args.skip:
            continue
        if needs_cuda and not run.cuda:
            run.skip_check(title, f"needs CUDA; this run's device is {args.device}")
        run.section(title, body, needs_cuda)
    if "timings" not in args.skip:
        timing_sections(run, setup)
    print(f"wrote {run.out / 'gpu_check.json'} and {run.out / 'gpu_check.md'} in {run.elapsed():.0f} s")
    return 1 if run.failed() else 0


def setup_problem(device: str) -> str | None:
    """Why nothing can be measured here, or None. Checked first, so a lent machine's minutes are not
    spent on a run whose every number would be wrong."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return "--device cuda, but torch sees no CUDA device"
    if "cache" not in inspect.signature(LlamaForCausalLM.forward).parameters:
        import transformers

        return (
            f"transformers {transformers.__version__} has no `cache=` argument, which mtad's KV cache "
            "passes (transformers >= 5.20, see pyproject.toml); carry a wheel as docs/gpu.md says"
        )
    return None


def correctness_sections(run: Run, setup: Setup) -> list[tuple[str, str, Callable[[], None], bool]]:
    """(key for --skip, title, body, needs CUDA), in the order they run."""

    def chi_squares() -> None:
        for method in ("sd", "specinfer"):
            run.check(f"chi-square of the first two tokens, {method}", lambda m=method: chi_square(run, m))

    greedy = [
        ("greedy", f"sd == greedy, {d}", lambda d=d: greedy_equality(run, setup, d), False)
        for d in run.args.check_dtypes
    ]
    return greedy + [
        ("chi-square", "chi-square", chi_squares, False),
        ("caches", "caches and seeds", lambda: caches_and_seeds(run, setup), False),
        ("draft-on-cpu", "draft on cpu, target on cuda", lambda: draft_on_cpu(run, setup), True),
        ("device-map", 'device_map="auto"', lambda: device_map_auto(run, setup), False),
    ]


def timing_sections(run: Run, setup: Setup) -> None:
    """Forward passes, then whole generations with energy; the models are built once for both."""
    models: dict = {}

    def build() -> None:
        models["target"], models["draft"] = timing_models(run, setup)

    run.section("build timing models", build)
    if not models:
        return
    run.section(
        "forward timings, target", lambda: forward_timings(run, "target", models["target"], run.args.prefix)
    )
    run.section(
        "forward timings, draft", lambda: forward_timings(run, "draft", models["draft"], run.args.prefix)
    )
    run.section(
        "method timings + energy", lambda: method_timings(run, setup, models["target"], models["draft"])
    )


if __name__ == "__main__":
    sys.exit(main())
