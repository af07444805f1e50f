#!/usr/bin/env bash
# The measurements in this directory, in the order they ran (alone on the machine, 2 threads).
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=docs/results/exact-blocks-2026-12
lscpu > "$out/lscpu.txt"
python benchmarks/forward_costs.py --variants off,fp16,auto --threads 2 \
    --json "$out/forward-costs-2threads.json" > "$out/forward-costs-2threads.txt" 2> /dev/null
python benchmarks/fast_path_speed.py --loads off,fp16,auto --methods ar,sd,mtad,mmtad \
    --prompts 8 --max-new-tokens 96 --threads 2 > "$out/speed-2threads.txt" 2> /dev/null
python benchmarks/vs_llama_cpp.py --prompts 6 --max-new-tokens 96 --threads 2 --methods ar,sd,mtad,mmtad \
    > "$out/vs-llama-cpp-2threads.txt" 2> /dev/null
# after gamma auto's solo round clock (the same command as speed-2threads.txt, fp16 load left out)
python benchmarks/fast_path_speed.py --loads off,auto --methods ar,sd,mtad,mmtad \
    --prompts 8 --max-new-tokens 96 --threads 2 > "$out/speed-clock-2threads.txt" 2> /dev/null
python benchmarks/model_free_drafts.py --threads 2 --offset 10 --mtbench 10 --humaneval 10 \
    --variants ar,sd:model,mtad:model,sd:suffix,mtad:suffix,specinfer:recycle+suffix:auto,mmtad:recycle+suffix:auto \
    --json "$out/mfd-2threads.json" > "$out/mfd-2threads.txt" 2> /dev/null
