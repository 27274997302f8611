"""Model size and image quality: parameters, MACs (torchprofile convention), PSNR/SSIM on uint8 images.

FID/KID live with their own issue; this file holds what the training loop and the demo report.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor, nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: Tensor) -> int:
    """Multiply-accumulates of one forward over the convolutions and linear layers, as torchprofile counts them
    (the convention of the GAN-compression papers' "56.8 G" and "1.41 G"): a conv's MACs are
    output elements x in_channels/groups x kernel area, and a transposed conv is charged per *output* element too.

    `torch.utils.flop_counter.FlopCounterMode` charges a transposed conv per *input* element (its true cost), so it
    reports 49.6 G for resnet_9blocks instead of 56.8 G; norms and activations count in neither.
    """
    total = 0

    def hook(module: nn.Module, args, out: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        else:  # Conv2d and ConvTranspose2d: weight is (C_out, C_in/g, k, k) or (C_in, C_out/g, k, k)
            c_in = module.in_channels // module.groups
            total += out.numel() * c_in * math.prod(module.kernel_size)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, rounded as an image file would store them."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def psnr_ssim(fake: Tensor, real: Tensor) -> tuple[list[float], list[float]]:
    """Per-image PSNR (dB) and SSIM of generated against real images, both quantised to uint8 first."""
    if fake.shape != real.shape:
        raise ValueError(f"fake has shape {tuple(fake.shape)}, expected the shape of real {tuple(real.shape)}")
    f8, r8 = to_uint8(fake), to_uint8(real)
    psnr = [float(peak_signal_noise_ratio(r, f, data_range=255)) for f, r in zip(f8, r8, strict=True)]
    ssim = [float(structural_similarity(r, f, data_range=255, channel_axis=-1)) for f, r in zip(f8, r8, strict=True)]
    return psnr, ssim
