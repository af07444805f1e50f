"""mtad's native CPU kernels (`csrc/native.cpp`), compiled for the machine that runs them.

The fp16-weight product of few rows is what a decode step and a verification spend most of their
time in. fbgemm's fp16 kernel runs it on one thread, and its cost grows steeply with rows; the
native kernel streams weights packed per tile of output columns over all of torch's threads (see
the source's header). It is built with `torch.utils.cpp_extension` and `-march=native` the first
time a process on a machine asks for it (~10-20 s with a C++ compiler), kept under
`$MTAD_CACHE/kernels/<key>` (the key: the source, the CPU's model and flags, torch, the compiler),
and checked against a reference product every time it loads. Where it cannot be built or loaded
(no compiler, a CPU without AVX2/FMA/F16C, `MTAD_NATIVE=0`), `kernels()` is None, `unavailable()`
says why, and the fp16 path runs fbgemm's kernel as before. A build left broken (a partial
library from a killed process) is removed and built again once, never trusted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mtad.runtime.records import cache_root, machine_key

SOURCE = Path(__file__).with_name("csrc") / "native.cpp"
#: Set to 0 to never build or use the native kernels (the fp16 path then runs fbgemm's).
ENV_SWITCH = "MTAD_NATIVE"
#: A build lock older than this was left by a killed build (a build takes ~15 s).
STALE_LOCK_S = 600


@dataclass(frozen=True)
class NativeKernels:
    """The loaded kernels and the tile their packed weights are laid out in."""

    isa: str  # the SIMD instruction set it was compiled for: avx512 or avx2
    columns: int  # output columns per packed tile
    lanes: int  # weights per SIMD register: out_features must be a multiple of it
    build: str = ""  # the build's key digest: another source or toolchain is another build

    def fits(self, out_features: int, in_features: int) -> bool:
        return out_features % self.lanes == 0 and out_features > 0 and in_features > 0

    def whole_tiles(self, out_features: int) -> bool:
        """Whether a packed weight of `out_features` rows is whole tiles: the packed weights of a
        matrix's row blocks concatenate to the matrix's packing when all but the last are."""
        return out_features % self.columns == 0

    def pack_fp16(self, weight: torch.Tensor) -> torch.Tensor:
        """[N, K] weights as fp16 in the kernel's tile order (see `csrc/native.cpp`), shaped [N, K]."""
        out_features, in_features = weight.shape
        half = weight.detach().half()
        full = out_features // self.columns * self.columns
        tiles = half[:full].reshape(-1, self.columns, in_features).transpose(1, 2)  # [tiles, K, columns]
        rest = half[full:].T  # [K, N - full]
        return torch.cat([tiles.reshape(-1), rest.reshape(-1)]).reshape(out_features, in_features)

    def linear_fp16(self, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [..., K] float32 @ the packed weights, fp16 or blocks (+ bias): [..., N] float32."""
        return torch.ops.mtad_native.linear_fp16_weight(x, packed, bias)

    def exact_blocks(self, weight: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """The block format whose grid holds every float32 weight of `weight` [N, K] exactly, and
        the weights packed in it (see `csrc/native.cpp`); None where no format does (then fp16).

        A Q4_1 block of 32 weights along K is d q + m with q in 0..15 and d, m fp16; a Q8_0 block is
        d q with q in -127..127. A GGUF model dequantized to float32 (the default target) lies on
        them: its smallest and largest weight per block give m and d back, and every weight is
        checked to be d q + m to the bit, so the packed model computes with the same weights."""
        return None if _blocks_disabled else self._on_grid(weight)

    def _on_grid(self, weight: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        out_features, in_features = weight.shape
        if (
            in_features % BLOCK
            or out_features % self.columns
            or weight.dtype != torch.float32
            or not weight.numel()
        ):
            return None
        blocks = weight.detach().reshape(out_features, in_features // BLOCK, BLOCK)
        low, high = blocks.amin(-1), blocks.amax(-1)
        scale = ((high - low) / 15).half()
        if torch.equal(low.half().float(), low) and torch.isfinite(scale).all():
            levels = _levels(blocks - low[..., None], scale, 0, 15)
            if torch.equal(levels * scale.float()[..., None] + low[..., None], blocks):
                return "q4_1", self._pack_blocks(levels.to(torch.uint8), [scale, low.half()], nibbles=True)
        scale = (torch.maximum(high, -low) / 127).half()
        if torch.isfinite(scale).all():
            levels = _levels(blocks, scale, -127, 127)
            if torch.equal(levels * scale.float()[..., None], blocks):
                return "q8_0", self._pack_blocks(levels.to(torch.int8), [scale], nibbles=False)
        return None

    def _pack_blocks(self, levels: torch.Tensor, scales: list[torch.Tensor], nibbles: bool) -> torch.Tensor:
        """levels [N, K / 32, 32] and fp16 scales [N, K / 32] in the tile order of `csrc/native.cpp`."""
        out_features, blocks, _ = levels.shape
        tiles = out_features // self.columns

        def tiled(t: torch.Tensor) -> torch.Tensor:  # [N, blocks, ...] -> [tiles, blocks, columns, ...]
            return t.reshape(tiles, self.columns, blocks, *t.shape[2:]).transpose(1, 2)

        parts = [tiled(scale).contiguous().view(torch.uint8).reshape(tiles, blocks, -1) for scale in scales]
        per_k = tiled(levels).transpose(2, 3)  # [tiles, blocks, 32 (k), columns]
        if nibbles:  # 32-bit word j of a vector: nibble kk vectors + v is column v lanes + j at step kk
            vectors = self.columns // self.lanes
            steps = 8 // vectors
            words = per_k.reshape(tiles, blocks, BLOCK // steps, steps, vectors, self.lanes)
            nibbles_of_words = words.permute(0, 1, 2, 5, 3, 4).reshape(
                tiles, blocks, BLOCK // steps, self.lanes, 4, 2
            )
            per_k = nibbles_of_words[..., 0] | (nibbles_of_words[..., 1] << 4)  # little-endian bytes
        parts.append(per_k.contiguous().view(torch.uint8).reshape(tiles, blocks, -1))
        packed = torch.cat(parts, dim=-1).reshape(out_features, -1)
        return packed if nibbles else packed.view(torch.int8)


_disabled = 0  # depth of `disabled()` blocks
_blocks_disabled = 0  # depth of `fp16_only()` blocks
#: Weights per block of the block formats (GGUF's Q4_1 and Q8_0 blocks).
BLOCK = 32


def _levels(blocks: torch.Tensor, scale: torch.Tensor, lowest: int, highest: int) -> torch.Tensor:
    """round(blocks / scale) per block, clamped to the format's levels (0 where a block's scale is 0)."""
    safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()[..., None]
    return torch.round(blocks / safe).clamp(lowest, highest)


def unavailable() -> str | None:
    """Why the native kernels cannot run in this process, or None when they can."""
    return "disabled while this model was packed" if _disabled else _load()[1]


def kernels() -> NativeKernels | None:
    """The native kernels, or None where they cannot run (or inside `disabled()`)."""
    return None if _disabled else _load()[0]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Layers packed inside this block use fbgemm's kernel (comparisons, tests of the fallback)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


@contextlib.contextmanager
def fp16_only() -> Iterator[None]:
    """Layers packed inside this block are stored as fp16 even where their weights lie on a block
    grid (comparisons of the two formats)."""
    global _blocks_disabled
    _blocks_disabled += 1
    try:
        yield
    finally:
        _blocks_disabled -= 1


@functools.cache
def _load() -> tuple[NativeKernels | None, str | None]:
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return None, f"{ENV_SWITCH}=0 is set"
    missing = _why_not_buildable()
    if missing:
        return None, missing
    directory = build_directory()
    for attempt in range(2):
        try:
            _build_and_load(directory)
            break
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            reason = str(error).strip().splitlines()
            reason = reason[-1] if reason else type(error).__name__
            if attempt == 0 and not _compile_error(error):  # a broken build left in the cache
                if not (directory / "lock").exists():  # (not one another process is writing)
                    shutil.rmtree(directory, ignore_errors=True)
                continue
            return None, f"the native kernels did not build: {reason[:200]}"
    columns, lanes = torch.ops.mtad_native.tile_shape()
    found = NativeKernels(torch.ops.mtad_native.isa(), int(columns), int(lanes), directory.name)
    wrong = _check(found)
    return (None, wrong) if wrong else (found, None)


def build_directory() -> Path:
    """Where this machine's build lives: one directory per source, CPU, torch and compiler."""
    source = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    key = machine_key() | {"source": source, "cxx": _compiler_version()}
    key.pop("threads")  # the kernels read the thread count when they run
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
    return cache_root() / "kernels" / digest


def _why_not_buildable() -> str | None:
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"they are written for x86-64 CPUs, not {platform.machine()}"
    from mtad.runtime.precision import cpu_flags

    needed = {"avx2", "fma", "f16c"} - set(cpu_flags())
    if needed:
        return f"this CPU lacks {', '.join(sorted(needed))}"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'c++')}) is installed"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja (the build tool torch.utils.cpp_extension runs) is not installed"
    return None


def _build_and_load(directory: Path) -> None:
    from torch.utils.cpp_extension import load

    built, lock = directory / "mtad_native.so", directory / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)  # left by a build that was killed: `load` would wait forever
    if built.is_file() and not lock.exists():  # built, and no other process is building it now
        torch.ops.load_library(str(built))  # the directory's key names its source and toolchain
        return
    directory.mkdir(parents=True, exist_ok=True)  # `load` waits for another process's build
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load(
            name="mtad_native",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )


def _compile_error(error: BaseException) -> bool:
    return "Error building extension" in str(error)


@functools.cache
def _compiler_version() -> str:
    try:
        result = subprocess.run(
            [os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.splitlines()[0] if result.stdout else "unknown"


def _check(found: NativeKernels) -> str | None:
    """A product of every row count a tile loop distinguishes, against float64 over the same
    fp16-rounded weights: a miscompiled kernel is refused, not used."""
    generator = torch.Generator().manual_seed(0)
    out_features = 2 * found.columns + found.lanes  # two whole tiles and the columns left over
    weight = torch.randn(out_features, 3 * found.lanes + 1, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    packed = found.pack_fp16(weight)
    for rows in (1, 2, 3, 4, 5, 6, 7, 13):
        x = torch.randn(rows, weight.shape[1], generator=generator)
        want = (x.double() @ weight.half().double().T + bias.double()).float()
        with torch.inference_mode():
            got = found.linear_fp16(x, packed, bias)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            return f"the native kernel's test product is wrong at {rows} rows (a miscompiled build)"
    for name, on_grid in _block_grid_weights(found, generator).items():
        exact = found._on_grid(on_grid)
        if exact is None or exact[0] != name:
            return f"weights on the {name} grid were not found exact (a miscompiled build)"
        for rows in (1, 2, 5, 7, 13):
            x = torch.randn(rows, on_grid.shape[1], generator=generator)
            want = (x.double() @ on_grid.double().T + bias[: len(on_grid)].double()).float()
            with torch.inference_mode():
                got = found.linear_fp16(x, exact[1], bias[: len(on_grid)])
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                return f"the native {name} product is wrong at {rows} rows (a miscompiled build)"
    return None


def _block_grid_weights(found: NativeKernels, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Two tiles of weights, 3 blocks deep, on the Q4_1 and Q8_0 grids (as a GGUF model dequantizes)."""
    shape = (2 * found.columns, 3, BLOCK)
    scale = (torch.rand(*shape[:2], 1, generator=generator) * 0.01 + 1e-3).half().float()
    offset = (torch.randn(*shape[:2], 1, generator=generator) * 0.05).half().float()
    q4 = torch.randint(0, 16, shape, generator=generator).float()
    q4[..., 0], q4[..., 1] = 0, 15  # a block's extremes are levels 0 and 15, as a quantizer leaves them
    q8 = torch.randint(-127, 128, shape, generator=generator).float()
    q8[..., 0] = 127
    return {
        "q4_1": (q4 * scale + offset).reshape(shape[0], -1),
        "q8_0": (q8 * scale).reshape(shape[0], -1),
    }
