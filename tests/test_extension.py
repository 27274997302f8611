"""The C++/CUDA extension ackd_fast._C loads and registers its kernels (their values: test_fusion_ops.py).

Where no build is expected to be there the tests skip when `_C` does not import; with ACKD_FAST_EXPECT_CUDA_BUILD=1
(CI builds with FORCE_CUDA=1) a `_C` that does not import, or that lacks its CUDA kernels, fails them.
"""

import os
import sys

import pytest
import torch

from ackd_fast import ops

OPS = ("ack_accumulate", "ack_accumulate_backward", "instance_norm_act_residual", "instance_norm_act_residual_backward")
# The forward ops also have autocast kernels (csrc/autocast.cpp) and C++ autograd kernels (csrc/autograd.cpp).
AUTOCAST_OPS = AUTOGRAD_OPS = ("ack_accumulate", "instance_norm_act_residual")
EXPECT_CUDA_BUILD = os.environ.get("ACKD_FAST_EXPECT_CUDA_BUILD") == "1"


def require_extension():
    if ops.EXTENSION_LOADED:
        return
    if EXPECT_CUDA_BUILD:
        pytest.fail(f"ACKD_FAST_EXPECT_CUDA_BUILD=1 but ackd_fast._C did not load: {ops.EXTENSION_ERROR}")
    pytest.skip(f"ackd_fast._C did not load: {ops.EXTENSION_ERROR}")


def test_extension_loads_and_registers_its_ops():
    require_extension()
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ackd_fast::{name}", "CPU"), name
    for name in AUTOCAST_OPS:
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ackd_fast::{name}", key), (name, key)
    for name in AUTOGRAD_OPS:  # registered in C++, so an eager call never returns to Python before the kernel
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ackd_fast::{name}", "Autograd"), name
        assert "csrc/autograd.cpp" in torch._C._dispatch_dump(f"ackd_fast::{name}"), name


@pytest.mark.skipif(not EXPECT_CUDA_BUILD, reason="a CUDA build is not expected here")
def test_extension_was_built_with_cuda():
    """CI builds with FORCE_CUDA=1: the CUDA kernels compiled, linked and registered."""
    require_extension()
    assert ops.extension_cuda_version() is not None and ops.extension_cuda_version() >= 11000
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ackd_fast::{name}", "CUDA"), name


def test_a_missing_extension_fails_where_a_build_is_expected(monkeypatch):
    """The guard itself: with the variable set, a `_C` that did not import is a failure, not a skip."""
    monkeypatch.setattr(ops, "EXTENSION_LOADED", False)
    monkeypatch.setattr(ops, "EXTENSION_ERROR", "ImportError: gone")
    monkeypatch.setattr(sys.modules[__name__], "EXPECT_CUDA_BUILD", True)
    with pytest.raises(pytest.fail.Exception, match=r"ACKD_FAST_EXPECT_CUDA_BUILD=1 but ackd_fast\._C did not load"):
        require_extension()
    monkeypatch.setattr(sys.modules[__name__], "EXPECT_CUDA_BUILD", False)
    with pytest.raises(pytest.skip.Exception, match=r"ackd_fast\._C did not load: ImportError: gone"):
        require_extension()
