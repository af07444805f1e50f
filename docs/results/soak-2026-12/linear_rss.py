"""RSS of F.linear on the default pair's layer shapes over 1200 distinct row counts, then the same again.

python docs/results/soak-2026-12/linear_rss.py bfloat16   # or float32; try ONEDNN_PRIMITIVE_CACHE_CAPACITY=0
"""

import os
import sys

import torch
import torch.nn.functional as F


def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


dtype = getattr(torch, sys.argv[1])
torch.manual_seed(0)
weights = [torch.randn(n, 576, dtype=dtype) for n in (576, 192, 1536)] + [torch.randn(1536, 576, dtype=dtype)]
down = torch.randn(576, 1536, dtype=dtype)
with torch.inference_mode():
    for m in (1, 2, 3):
        x = torch.randn(m, 576, dtype=dtype)
        for w in weights:
            F.linear(x, w)
    base = rss()
    cache = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "default")
    print(f"{sys.argv[1]} cache={cache} start {base:.0f} MB")
    for m in range(1, 1201):
        x = torch.randn(m, 576, dtype=dtype)
        for w in weights:
            F.linear(x, w)
        F.linear(torch.randn(m, 1536, dtype=dtype), down)
        if m % 200 == 0:
            print(f"  {m} distinct row counts: {rss():.0f} MB (+{rss() - base:.0f})", flush=True)
    again = rss()
    for m in range(1, 1201):  # the same shapes again: a cache does not grow
        x = torch.randn(m, 576, dtype=dtype)
        for w in weights:
            F.linear(x, w)
        F.linear(torch.randn(m, 1536, dtype=dtype), down)
    print(f"  same shapes again: {rss():.0f} MB (+{rss() - again:.0f})")
