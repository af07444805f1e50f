"""How forwards run on this machine: packed weight formats (`linear`) and the run-time choice of
one (`fast`). Decoding code above never sees the difference: a packed model is called as before."""
