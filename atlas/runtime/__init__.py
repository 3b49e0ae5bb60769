"""Where and how the stages compute: Dask scheduling, numeric precision, forward-mode autodiff.

- :mod:`atlas.runtime.distributed`: local processes or a Dask scheduler; model specs workers load
- :mod:`atlas.runtime.precision`: float32 / bf16 / fp16 settings and autocast
- :mod:`atlas.runtime.forward_ad`: Jacobian-vector products for per-position attribution
"""
