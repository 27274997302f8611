"""The C++/CUDA extension ackd_fast._C loads and registers its kernels (their values: test_fusion_ops.py)."""

import os

import pytest
import torch

from ackd_fast import ops

OPS = ("ack_accumulate", "ack_accumulate_backward", "instance_norm_act_residual", "instance_norm_act_residual_backward")

pytestmark = pytest.mark.skipif(not ops.EXTENSION_LOADED, reason=f"ackd_fast._C did not load: {ops.EXTENSION_ERROR}")


def test_extension_loads_and_registers_its_ops():
    assert ops.EXTENSION_LOADED, ops.EXTENSION_ERROR
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ackd_fast::{name}", "CPU"), name


@pytest.mark.skipif(os.environ.get("ACKD_FAST_EXPECT_CUDA_BUILD") != "1", reason="a CUDA build is not expected here")
def test_extension_was_built_with_cuda():
    """CI builds with FORCE_CUDA=1: the CUDA kernels compiled, linked and registered."""
    assert ops.extension_cuda_version() is not None and ops.extension_cuda_version() >= 11000
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ackd_fast::{name}", "CUDA"), name
