"""RSS and time of bfloat16 F.linear on the default pair's layer shapes, with and without the bounds
`mtad serve` sets (a 64-entry oneDNN primitive cache, glibc's mmap threshold fixed at 128 KiB).

python docs/results/soak-2026-12/native_bounds.py default off     # oneDNN's 1024, glibc's rising threshold
python docs/results/soak-2026-12/native_bounds.py 64 131072       # what `mtad serve` sets

800 distinct row counts, then the same 800 again (RSS growth over the first call's), then the
mean time of a product over 1-256 rows cycling (one torch thread).
"""

import ctypes
import os
import sys
import time

import torch
import torch.nn.functional as F

cap, mmap = sys.argv[1], sys.argv[2]
if cap != "default":
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = cap  # before the first primitive: oneDNN reads it then
if mmap != "off":
    assert ctypes.CDLL("libc.so.6").mallopt(-3, int(mmap)) == 1  # M_MMAP_THRESHOLD
torch.set_num_threads(1)


def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


dtype = torch.bfloat16
torch.manual_seed(0)
weights = [torch.randn(n, 576, dtype=dtype) for n in (576, 192, 1536, 1536)]
down = torch.randn(576, 1536, dtype=dtype)


def sweep(rows):
    for m in rows:
        x = torch.randn(m, 576, dtype=dtype)
        for w in weights:
            F.linear(x, w)
        F.linear(torch.randn(m, 1536, dtype=dtype), down)


with torch.inference_mode():
    sweep([1, 2, 3])
    base = rss()
    sweep(range(1, 801))
    first = rss() - base
    sweep(range(1, 801))
    again = rss() - base
    xs = [torch.randn(m, 576, dtype=dtype) for m in (1, 2, 3, 5, 9, 17, 64, 256)]
    start, calls = time.perf_counter(), 0
    for _ in range(100):
        for x in xs:
            for w in weights:
                F.linear(x, w)
                calls += 1
    us = (time.perf_counter() - start) / calls * 1e6
print(
    f"cache={cap} mmap={mmap}: +{first:.0f} MB over 800 row counts, +{again:.0f} MB after the same "
    f"again, {us:.1f} us a product"
)
