#!/bin/bash
# The same mtad bench on two versions of main, alternated (rounds 1 2 3). Worktrees:
#   git worktree add /tmp/before e4bd49b ; git worktree add /tmp/after <the version to check>
# Run alone on the machine; each run writes runs/layout-<side>-<round>/.
. .venv/bin/activate
for round in ${ROUNDS:-1 2 3}; do
  for side in before after; do
    PYTHONPATH=/tmp/$side/src python -m mtad bench --dataset mtbench --limit 8 --methods ar,sd,mtad,mmtad \
      --sweep gamma=4,auto --seed 0 --quiet --out runs/layout-$side-$round --overwrite \
      > runs/layout-$side-$round.log 2>&1
  done
done
