"""Triton kernels, installed as `ackd_fast.kernels` (ACK-A forward and backward arrive with the ACK-A issue).

Nothing here imports the modules; `ackd_fast.ops` calls in. Under TRITON_INTERPRET=1 (set before this package is
imported) the kernels run on CPU tensors.
"""
