"""The decoding core: how a block of tokens is proposed, verified and committed.

Read in this order: `reference` (one SD and one MTAD step over plain model calls: the whole idea
in ~100 lines), then the optimised pieces it stands for.
"""
