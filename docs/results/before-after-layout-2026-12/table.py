"""Before/after the layout move: the same mtad bench, rounds alternated, side by side."""
import csv
import os

ROUNDS = [r for r in (1, 2, 3) if os.path.exists(f"runs/layout-after-{r}/summary.csv")]
rows = {}
for side in ("before", "after"):
    for rnd in ROUNDS:
        with open(f"runs/layout-{side}-{rnd}/summary.csv") as f:
            for r in csv.DictReader(f):
                rows.setdefault(r["variant"], {})[(side, rnd)] = r


def g(r, k, fmt):
    v = r.get(k, "")
    return format(float(v), fmt) if v not in ("", None) else "—"


def cells(by, side, key, fmt):
    return ", ".join(g(by[(side, r)], key, fmt) for r in ROUNDS)


print(f"rounds {ROUNDS}; each cell lists the rounds in order")
print("| variant | acceptance before / after | block efficiency before / after | speed-up vs ar before | after |")
print("|---|---|---|---|---|")
for variant, by in rows.items():
    acc = f"{cells(by, 'before', 'acceptance_rate', '.3f')} / {cells(by, 'after', 'acceptance_rate', '.3f')}"
    be = f"{cells(by, 'before', 'block_efficiency', '.3f')} / {cells(by, 'after', 'block_efficiency', '.3f')}"
    sb = cells(by, "before", "speedup_vs_ar_median", ".2f")
    sa = cells(by, "after", "speedup_vs_ar_median", ".2f")
    print(f"| {variant} | {acc} | {be} | {sb} | {sa} |")
print()
for side in ("before", "after"):
    print(f"ar tokens/s {side}:", cells(rows["ar"], side, "tokens_per_s_median", ".1f"))
