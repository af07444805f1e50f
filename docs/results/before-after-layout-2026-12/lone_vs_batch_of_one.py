"""A lone prompt on the plain path (Generation) against the same prompt as a batch of one
(BatchGeneration: greenlet rows over ragged caches): tokens/s and token equality, interleaved."""
import statistics
import sys

import mtad
from mtad.bench.datasets import load_dataset
from mtad.bench.scoring import encode_record
from mtad.config import PAPER_WARP
from mtad.models.default_pair import default_draft_path, default_target_path

target, draft = mtad.load_pair(str(default_target_path()), str(default_draft_path()))
records = load_dataset("mtbench")[:6]
prompts = [encode_record(r, target.tokenizer) for r in records]
settings = PAPER_WARP | {"max_new_tokens": 96, "eos_token_id": [], "tokenizer": target.tokenizer}
mtad.generate(target.model, draft.model, prompts[0], method="mtad", gamma="auto", seed=0, **settings)  # warm
for method, gamma in (("ar", 4), ("sd", 4), ("mtad", 4), ("mtad", "auto")):
    lone, one, same = [], [], 0
    for i, prompt in enumerate(prompts):
        order = ("lone", "batch") if i % 2 == 0 else ("batch", "lone")
        out = {}
        for kind in order:
            given = prompt if kind == "lone" else [prompt]
            result = mtad.generate(target.model, draft.model, given, method=method, gamma=gamma, seed=i, **settings)
            result = result if kind == "lone" else result[0]
            out[kind] = result
        lone.append(out["lone"].stats.tokens_per_s)
        one.append(out["batch"].stats.tokens_per_s)
        same += out["lone"].tokens == out["batch"].tokens
    ratio = statistics.median(b / a for a, b in zip(lone, one))
    print(f"{method} gamma={gamma}: lone {statistics.median(lone):.1f} tok/s, batch of one "
          f"{statistics.median(one):.1f} tok/s (median ratio {ratio:.3f}); same tokens {same}/{len(prompts)}",
          flush=True)
