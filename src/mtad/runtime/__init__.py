"""How forwards run on this machine: packed weight formats (`linear`) and the run-time choice of
one (`fast`). Decoding code above never sees the difference: a packed model is called as before.

Also here, because decoding and loading both stand on them: the dtype chosen per device
(`precision`), the roofline (`costs`), and where tensors live between rounds: a model with its KV
cache and the named rollback operations (`cache`), a draft's map onto a subset of the target's
ids (`vocabulary`), the 4D masks custom attention takes (`attention`), and a batch's shared,
ragged caches (`ragged`, with `slack_layer`). Nothing here imports `mtad.models` or
`mtad.decoding`."""
