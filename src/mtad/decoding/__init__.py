"""The decoding core: how a block of tokens is proposed, verified and committed. Read in this order:

    reference     one SD and one MTAD step over plain model calls, no cache: the idea in ~100
                  lines, and the oracle the optimised loop is tested against
    sampling      the one warp (temperature, top-k, top-p) and seeded draws
    acceptance    pure acceptance rules: speculative, MTAD's joint threshold, the tree rules
    tree          token trees as data: node order, ancestor masks, positions
    proposals     proposers (chain, beams, beam tree, branching tree) and how a round verifies
                  and rolls itself back
    shapes        draft shapes as objects: depth, verified nodes, draft cost, needs a draft
    methods       the registry: a method = a draft shape, a proposer, a rule, its settings
    speculation   the settings that depend on a method, and the limits that size a round
    loop          the one decode loop: propose -> verify -> commit -> roll back -> record
    stopping      EOS, budget and stop strings, cut before anything is appended or streamed
    adaptive      gamma "auto": forward costs and the depth policy
    batch         several prompts at once: one greenlet per row, one forward per model

Below it: `mtad.runtime` (caches, how forwards run) and `mtad.models` (loading, draft kinds).
Nothing here imports the applications above it (cli, serve, bench, distill).
"""
