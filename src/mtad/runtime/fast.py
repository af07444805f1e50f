"""The fast path: which weight format a model's linear layers use on this machine, decided at run time.

`fast="auto"` (the default everywhere) packs the linear layers into fp16 weights with float32
arithmetic (`mtad.runtime.linear.Fp16Linear`: mtad's native kernel where it builds, else fbgemm's)
on CPUs where a short timed self-test shows it beats the dense dtype `auto` would otherwise pick;
elsewhere (GPUs, CPUs without either kernel, a machine where it does not pay) the model stays as
loaded. The self-test multiplies decode-shaped rows by a set of weight matrices larger than the
CPU's caches, as a forward does, dense against packed, interleaved, median (~1 s, once per machine
and kept). "on" packs without asking and refuses (`FastPathError`) where the kernels cannot run;
"off" never packs.

With the fp16 weights the rest of the model (embeddings, norms, attention, the KV cache) runs in
float32: the kernels compute in float32 anyway, so a bfloat16 model would only add conversions
and rounding. `quantize` ("int8", "int4") stores weights in fewer bits instead, explicitly lossy
(int4 keeps the grid of a Q4 GGUF model, up to its bfloat16 scales and offsets); the result says
the largest weight error, and the loaded model *is* the quantized one (stats, reports, `/health`).
"""

from __future__ import annotations

import collections
import functools
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from mtad.config import is_finite_number
from mtad.errors import MtadError
from mtad.runtime.fused import fuse_layers
from mtad.runtime.linear import FORMATS, pack_linears
from mtad.runtime.native import kernels, unavailable
from mtad.runtime.precision import DTYPES, auto_dtype, dtype_name, resolve_dtype
from mtad.runtime.records import machine_key, recall, remember

FAST_MODES = ("auto", "on", "off")
QUANTIZE_FORMATS = ("none", "int8", "int4")
#: The packed format is chosen when its self-test time is at most this fraction of the dense one's.
FAST_MAX_RATIO = 0.9


class FastPathError(MtadError):
    """The fast path or a quantized format was asked for where it cannot run."""


@dataclass(frozen=True)
class FastPath:
    """What a model's linear layers run as, and why (shown in --json, bench machine.json, /health)."""

    mode: str  # as asked: auto, on, off
    weights: str  # dense, fp16, int8 or int4
    dtype: str | None  # the activations' dtype this choice needs (None: whatever was asked)
    reason: str
    layers: int = 0  # linear layers packed
    weight_bytes: int = 0  # bytes their weights occupy (packed, and any dense copy)
    weight_error: float = 0.0  # largest |packed - original| over their weights
    # fp16: products of at least this many rows use a dense copy in dense_dtype (None: never)
    dense_from_rows: int | None = None
    dense_dtype: str | None = None
    kernel: str = ""  # fp16: which kernel the packed layers run, and why (`mtad.runtime.native`)
    fused: str = ""  # fp16 with the native kernel: the modules fused (`mtad.runtime.fused`)

    def as_dict(self) -> dict:
        return asdict(self)


def check_modes(fast: str, quantize: str | None) -> str:
    """Validate the two settings; quantize None means "none"."""
    if fast not in FAST_MODES:
        raise FastPathError(f"unknown fast mode {fast!r}; allowed: {', '.join(FAST_MODES)}")
    quantize = "none" if quantize is None else quantize
    if quantize not in QUANTIZE_FORMATS:
        raise FastPathError(f"unknown quantize format {quantize!r}; allowed: {', '.join(QUANTIZE_FORMATS)}")
    return quantize


def plan(
    fast: str,
    quantize: str | None,
    device: str | torch.device | None,
    dtype_asked: bool = False,
    device_map: bool = False,
) -> FastPath:
    """The weight format for a model about to be loaded on `device` (not yet packed).

    `dtype_asked`: the caller named a dtype other than float32; "auto" then leaves the model dense
    (fp16 weights compute in float32, which would silently override a bfloat16 request).
    `device_map`: accelerate places the weights (offloading, several devices); nothing is packed.
    """
    quantize = check_modes(fast, quantize)
    where = torch.device(device or "cpu")
    if device_map:
        if fast == "on" or quantize != "none":
            raise FastPathError("fast on and quantize pack weights for one CPU; a device map was given")
        return FastPath(fast, "dense", None, "a device map places the weights")
    if quantize != "none":
        if where.type != "cpu":
            raise FastPathError(f"quantize {quantize} runs on CPUs only, not on {where}; allowed: none there")
        missing = _kernel_missing(quantize)
        if missing:
            raise FastPathError(f"quantize {quantize} cannot run here: {missing}; allowed: none")
        activations = dtype_name(FORMATS[quantize].compute_dtype)
        return FastPath(fast, quantize, activations, f"quantize {quantize} was asked for (lossy)")
    if fast == "off":
        return FastPath(fast, "dense", None, "fast path off")
    if where.type != "cpu":
        if fast == "on":
            raise FastPathError(f"fast on packs weights for CPU kernels; device {where} is not a CPU")
        return FastPath(fast, "dense", None, f"{where.type}: its dense kernels are the fast ones")
    missing = _kernel_missing("fp16")
    if missing:
        if fast == "on":
            raise FastPathError(f"fast on cannot run here: {missing}; allowed: auto, off")
        return FastPath(fast, "dense", None, missing)
    if fast == "auto" and dtype_asked:
        return FastPath(fast, "dense", None, "a dtype was named; fast on packs it anyway")
    test = fp16_self_test()
    fp16_dtype = dtype_name(FORMATS["fp16"].compute_dtype)
    crossover = {"dense_from_rows": test.dense_from_rows, "dense_dtype": test.dense_dtype}
    if test.dense_from_rows is None:
        crossover["dense_dtype"] = None
    found = (
        f"self-test fp16/{test.dense_dtype} time {test.ratio:.2f}"
        + (f", {test.dense_dtype} from {test.dense_from_rows} rows" if test.dense_from_rows else "")
        + (f" (kept from {test.kept_from})" if test.kept_from else "")
    )
    if fast == "on":
        return FastPath(fast, "fp16", fp16_dtype, f"fast on was asked for; {found}", **crossover)
    if test.ratio <= FAST_MAX_RATIO:
        return FastPath(fast, "fp16", fp16_dtype, found, **crossover)
    return FastPath(fast, "dense", None, f"{found} > {FAST_MAX_RATIO}")


def resolve(
    fast: str,
    quantize: str | None,
    dtype: str | torch.dtype | None,
    device: str | torch.device | None,
    device_map: bool = False,
) -> tuple[FastPath, torch.dtype]:
    """The plan for a model about to be loaded, and the dtype it then runs in (`dtype` None or
    "auto": the packed format's activation dtype when it packs, else the device's best)."""
    asked = dtype not in (None, "auto") and resolve_dtype(dtype, device) != torch.float32
    path = plan(fast, quantize, device, dtype_asked=asked, device_map=device_map)
    packs = path.weights != "dense"
    return path, resolve_dtype(path.dtype if packs and dtype in (None, "auto") else dtype, device)


def load_settings(weights: str) -> dict[str, str]:
    """The `fast`/`quantize` settings that load a model with `weights` again (bench reruns)."""
    if weights in FORMATS and weights != "fp16":
        return {"fast": "off", "quantize": weights}
    return {"fast": "on" if weights == "fp16" else "off", "quantize": "none"}


def apply(model: nn.Module, path: FastPath) -> FastPath:
    """Pack `model`'s linear layers as `path` says (in place); the plan with what was done."""
    if path.weights == "dense":
        result = path
    else:
        options = {}
        if path.dense_from_rows is not None:
            options = {
                "dense_from_rows": path.dense_from_rows,
                "dense_dtype": getattr(torch, path.dense_dtype),
            }
        packed = pack_linears(model, path.weights, **options)
        dense_copies = sum(_dense_bytes(layer) for layer in packed)
        native = kernels() if path.weights == "fp16" else None
        fused = fuse_layers(model) if native is not None else {}
        result = replace(
            path,
            kernel=_kernels_used(packed) if path.weights == "fp16" else "",
            fused=", ".join(f"{count} {kind}" for kind, count in fused.items() if count),
            layers=len(packed),
            weight_bytes=sum(layer.nbytes for layer in packed) + dense_copies,
            weight_error=max((layer.weight_error for layer in packed), default=0.0),
        )
    model.mtad_fast_path = result  # read by weights_format and the reports
    return result


def _kernels_used(layers: list) -> str:
    """Which kernel fp16 layers run: "native avx512", "fbgemm (native: <why not>)", or a mix
    where some layers' shapes do not fit the native kernel's tile."""
    native = sum(layer.kernel == "native" for layer in layers)
    if native == 0:
        return f"fbgemm (native: {unavailable() or 'no layer fits its tile'})"
    isa = kernels().isa
    blocks = collections.Counter(layer.blocks for layer in layers if layer.blocks is not None)
    exact = "".join(
        f", {count} {'layer' if count == 1 else 'layers'} as exact {name.upper()} blocks"
        for name, count in sorted(blocks.items())
    )
    if native == len(layers):
        return f"native {isa}{exact}"
    return (
        f"native {isa} on {native} of {len(layers)} layers{exact}, fbgemm on the rest (shapes off its tile)"
    )


def fast_path_of(model: nn.Module) -> FastPath | None:
    return getattr(model, "mtad_fast_path", None)


def weights_format(model: nn.Module) -> str:
    """How `model`'s linear weights are stored: part of what a forward costs (`mtad.decoding.adaptive`)."""
    path = fast_path_of(model)
    return path.weights if path is not None else "dense"


@functools.cache
def _kernel_missing(format: str) -> str | None:
    """Why `format`'s kernel cannot run on this machine, or None when a tiny product works."""
    if format == "fp16" and kernels() is None and "fbgemm" not in torch.backends.quantized.supported_engines:
        return "this torch build has no fbgemm (an x86 CPU kernel library)"
    try:
        layer = FORMATS[format](nn.Linear(64, 16, bias=False))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer(torch.ones(2, 64))
    except (RuntimeError, NotImplementedError) as error:
        return f"its kernel failed a test product ({str(error).splitlines()[0][:120]})"
    return None


@dataclass(frozen=True)
class SelfTest:
    ratio: float  # fp16 time / dense time at decode rows (1 and 4)
    dense_dtype: str  # the dense dtype dtype auto picks here
    dense_from_rows: int | None  # fewest rows from which dense is faster at every larger size tried
    kept_from: str = ""  # when a record made on this machine measured it ("": measured now)


#: Bumped when the self-test measures differently: records of older versions are measured again.
SELF_TEST_VERSION = 2
#: Row counts the self-test tries for the crossover to dense products (prefills, wide batches).
CROSSOVER_ROWS = (8, 16, 32, 64, 128)


def fp16_self_test(repeats: int = 7) -> SelfTest:
    """fp16 weights (the native kernel where it is built, else fbgemm's) against the dense dtype
    dtype auto picks here (bfloat16 or float32): measured once per machine and kernel (~1 s) and
    kept (`mtad.runtime.records`), so every process on it decides alike and none pays again; a
    record of another CPU, torch, thread count or native build, or a corrupt one, is measured
    again."""
    native = kernels()
    return _self_test(f"native {native.isa} {native.build}" if native else "fbgemm", repeats)


@functools.cache
def _self_test(kernel: str, repeats: int) -> SelfTest:
    key = machine_key() | {"test": SELF_TEST_VERSION, "repeats": repeats, "kernel": kernel}
    kept = recall("fp16-self-test", key)
    if kept is not None and _plausible(kept):  # else a corrupt record: measured again
        return SelfTest(kept["ratio"], kept["dense_dtype"], kept["dense_from_rows"], kept["measured_at"])
    test = _measure_fp16(repeats)
    remember("fp16-self-test", key, {k: v for k, v in asdict(test).items() if k != "kept_from"})
    return test


def _plausible(kept: dict) -> bool:
    """Whether a record's values are ones the self-test can give (a field missing, of another
    type or out of range is a corrupt record)."""
    ratio = kept.get("ratio")
    return (
        is_finite_number(ratio)
        and ratio > 0
        and kept.get("dense_dtype") in DTYPES
        and kept.get("dense_from_rows", 0) in (None, *CROSSOVER_ROWS)
    )


def _measure_fp16(repeats: int) -> SelfTest:
    """16 matrices of 1536 x 576 (SmolLM2-135M's MLP): 56 MB in float32, larger than a CPU's last-level
    cache, so weights stream from memory as they do in a forward. Medians of interleaved rounds
    (first dropped) at 1 and 4 rows (decoding) and at each of CROSSOVER_ROWS."""
    dense_dtype = auto_dtype("cpu").dtype
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(1536, 576, generator=generator) / 24 for _ in range(16)]
    dense = [w.to(dense_dtype) for w in weights]
    packed = pack_linears(nn.ModuleList(_linear(w) for w in weights), "fp16")
    sizes = ((1, 4), *((rows,) for rows in CROSSOVER_ROWS))
    times: dict[tuple, dict[str, list[float]]] = {size: {"dense": [], "fp16": []} for size in sizes}
    with torch.inference_mode():
        for _ in range(repeats + 1):
            for size in sizes:
                inputs = [torch.randn(rows, 576, generator=generator) for rows in size]
                for name, seconds in times[size].items():
                    start = time.perf_counter()
                    for x in inputs:
                        if name == "dense":
                            x = x.to(dense_dtype)
                            for w in dense:
                                torch.nn.functional.linear(x, w)
                        else:
                            for layer in packed:
                                layer(x)
                    seconds.append(time.perf_counter() - start)
    ratios = {
        size: statistics.median(by["fp16"][1:]) / max(statistics.median(by["dense"][1:]), 1e-12)
        for size, by in times.items()
    }
    crossover = None
    for rows in reversed(CROSSOVER_ROWS):  # dense must win here and at every larger size tried
        if ratios[(rows,)] < 1 / FAST_MAX_RATIO:
            break
        crossover = rows
    return SelfTest(ratios[(1, 4)], dtype_name(dense_dtype), crossover)


def _dense_bytes(layer) -> int:
    dense = getattr(layer, "dense", None)
    return 0 if dense is None else dense.numel() * dense.element_size()


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer
