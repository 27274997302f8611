"""The Triton kernels of ACK-A, installed as `ackd_fast.kernels` (setup.py maps this folder there):
`ack_attention` (the forward and backward kernels and their launchers), `configs` (the autotune configs) and
`aot` (the ahead-of-time compilation check for sm_80 and sm_90: `python -m ackd_fast.kernels.aot`).

Nothing here imports the modules; `ackd_fast.ops` calls in. Under TRITON_INTERPRET=1 (set before this package is
imported) the kernels run on CPU tensors.
"""
