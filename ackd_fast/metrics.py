"""Metrics as the GAN-compression papers compute them: FID and KID, PSNR/SSIM, parameters, MACs and latency.

FID follows GAN Compression and OMGD (ANCHORS.md): generated images are quantised to uint8 the way pix2pix's
`tensor2im` does it (scaled to [0, 255], then truncated), then go through the `pytorch-fid` package's InceptionV3
with the `pt_inception-2015-12-05` weights, which resizes them bilinearly to 299x299; its 2048-d pool3 features are
summarised by a running mean and covariance in float64, so no image is held after its batch; the Frechet distance is
pytorch-fid's own. KID is the unbiased polynomial-kernel MMD over random subsets of the same features.

pytorch-fid and torchmetrics are imported where they are used: the model-size and latency helpers need neither.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

from ackd_fast.checkpoint import load_tensors, write_bytes_atomic
from ackd_fast.errors import UsageError, optional_import

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # the name pytorch-fid downloads it under
# The published file's sha256 (95,628,359 bytes; torch hub's convention puts its first digits in the file name)
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_SHA256_HELP = (
    "the sha256 the Inception weights must have: the published file's by default; a file with another digest is "
    "refused unread (give its digest to use it anyway: its FID/KID are not comparable with published figures)"
)
FEATURE_DIM = 2048


class InceptionWeightsError(FileNotFoundError):
    """FID/KID were asked for and pytorch-fid's Inception weights are neither given nor in the torch hub cache."""


# ------------------------------------------------------------------------------------------------- images


def quantize(images: Tensor) -> Tensor:
    """Generated (B, 3, H, W) images in [-1, 1] -> uint8, as pix2pix's `tensor2im` (used by GAN Compression and
    OMGD before FID) makes them: (x + 1) / 2 * 255, truncated. Real images from files are uint8 already
    (`data.to_uint8` recovers them exactly from the dataset's tensors)."""
    return ((images.detach().float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)


def psnr_ssim(fake: Tensor, real: Tensor) -> tuple[list[float], list[float]]:
    """Per-image PSNR (dB) and SSIM (11x11 Gaussian window, sigma 1.5) of uint8 (B, 3, H, W) images, by
    torchmetrics, with data range 255."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if fake.shape != real.shape:
        raise ValueError(f"fake has shape {tuple(fake.shape)}, expected the shape of real {tuple(real.shape)}")
    if fake.dtype != torch.uint8 or real.dtype != torch.uint8:
        raise TypeError(f"fake and real must be uint8 images, got {fake.dtype} and {real.dtype}")
    f, r = fake.double(), real.double()
    psnr = peak_signal_noise_ratio(f, r, data_range=255.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(f, r, data_range=255.0, reduction="none")
    return psnr.tolist(), ssim.tolist()


# ------------------------------------------------------------------------------------------------- Inception


def inception_cache_path() -> Path:
    """Where pytorch-fid's download lands: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(expected: str) -> str:
    """`expected` (--inception-sha256) in lower case; UsageError unless it is 64 hexadecimal digits."""
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", expected):
        raise UsageError(f"--inception-sha256 must be 64 hexadecimal digits (a sha256), got {expected!r}")
    return expected.lower()


def load_inception(
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
    sha256: str = INCEPTION_SHA256,
) -> nn.Module:
    """pytorch-fid's InceptionV3 returning the 2048-d pool3 features, in eval mode on `device`.

    weights: a local copy of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`; None takes the torch hub cache,
    downloading into it when `download` and online. Raises InceptionWeightsError naming both options otherwise.
    The file must have the sha256 `sha256` (the published file's by default; other weights give FID/KID that are
    not comparable with published figures): a mismatch is a ValueError naming the file and both digests. Only then
    is it read, with weights_only=True, and loaded into pytorch-fid's network: pytorch-fid and torch.hub never open
    the file (they would unpickle it with weights_only=False, which runs code a file carries).
    """
    inception_module = optional_import("pytorch_fid.inception", "FID/KID", "--no-fid skips them")
    FID_WEIGHTS_URL, InceptionV3 = inception_module.FID_WEIGHTS_URL, inception_module.InceptionV3
    sha256 = check_sha256(sha256)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise InceptionWeightsError(
                f"inception_weights {str(path)!r} does not exist; expected a copy of pytorch-fid's {INCEPTION_FILE} "
                "(--no-fid skips FID/KID)"
            )
    else:
        path = inception_cache_path()
        if not path.is_file():
            if not download:
                raise InceptionWeightsError(_missing_weights_message(path, FID_WEIGHTS_URL, "downloads are off"))
            try:  # only the bytes: the checks below decide whether they are read
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(FID_WEIGHTS_URL, str(path), hash_prefix=sha256[:8], progress=True)
            except (OSError, RuntimeError) as e:  # URLError, HTTPError, socket errors are OSErrors; a bad hash
                why = f"the download failed ({' '.join(str(e).split())[:200]})"
                raise InceptionWeightsError(_missing_weights_message(path, FID_WEIGHTS_URL, why)) from None
    digest = file_sha256(path)
    if digest != sha256:
        published = "pytorch-fid's published weights" if sha256 == INCEPTION_SHA256 else "--inception-sha256"
        raise ValueError(
            f"Inception weights file {path} has sha256 {digest}, not {sha256} ({published}): refused unread; pass "
            f"--inception-sha256 {digest} to use this file anyway (its FID/KID are not comparable with published "
            "figures), or --no-fid"
        )
    state = load_tensors(path)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"Inception weights file {path} is not pytorch-fid's Inception state dict (no dict of tensors); expected "
            f"a copy of {INCEPTION_FILE}"
        )

    def hand_over(url: str, *args, **kwargs) -> dict:  # what pytorch-fid asks torch.hub for, already read safely
        if url != FID_WEIGHTS_URL:
            raise RuntimeError(f"pytorch-fid asked for {url}, not its Inception weights")
        return state

    with mock.patch.object(inception_module, "load_state_dict_from_url", hand_over):
        try:
            net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]])
        except RuntimeError as e:  # load_state_dict: "Error(s) in loading ...:" then missing/unexpected keys, shapes
            lines = [line.strip() for line in str(e).strip().splitlines()] or [type(e).__name__]
            raise ValueError(
                f"Inception weights file {path} is not pytorch-fid's Inception state dict ({lines[-1][:200]}); "
                f"expected a copy of {INCEPTION_FILE}, or --no-fid to skip FID/KID"
            ) from None
    return net.to(device).eval()


def _missing_weights_message(cached: Path, url: str, why: str) -> str:
    return (
        f"FID/KID need pytorch-fid's Inception weights ({INCEPTION_FILE}); none is at {cached} and {why}. Either "
        f"put the file there (torch hub cache; it is downloaded there from {url} when online), or pass "
        f"--inception-weights PATH (inception_weights=PATH) pointing at a copy of it; --no-fid skips FID/KID."
    )


def weights_are_published(weights: str | os.PathLike | None) -> bool:
    """Whether the Inception file is the published one: FIDs made with other weights are not comparable with the
    papers'."""
    path = Path(weights) if weights else inception_cache_path()
    return path.is_file() and file_sha256(path) == INCEPTION_SHA256


@torch.no_grad()
def inception_features(inception: nn.Module, images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) images -> (B, 2048) pool3 features (float32), scaled to [0, 1] as pytorch-fid reads
    image files; the network resizes to 299 itself."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (see metrics.quantize), got {images.dtype}")
    device = next(inception.parameters()).device
    x = images.to(device=device, dtype=torch.float32) / 255
    return inception(x)[0].flatten(1)


class FeatureStats:
    """Running mean and covariance of feature vectors in float64, merged batch by batch (Chan et al.'s update, exact
    and stable); `keep_features` also keeps the float32 features, which KID needs."""

    def __init__(self, keep_features: bool = False):
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None  # sum of outer products of deviations from the mean
        self.features: list[Tensor] | None = [] if keep_features else None

    def update(self, features: Tensor) -> None:
        x = features.detach().double()
        nb, mb = x.shape[0], x.mean(0)
        m2b = (x - mb).T @ (x - mb)
        if self.n == 0:
            self.mean, self.m2 = mb, m2b
        else:
            delta, total = mb - self.mean, self.n + nb
            self.mean = self.mean + delta * (nb / total)
            self.m2 = self.m2 + m2b + torch.outer(delta, delta) * (self.n * nb / total)
        self.n += nb
        if self.features is not None:
            self.features.append(features.detach().float().cpu())

    def result(self) -> dict:
        """{"mu", "sigma" (unbiased, as np.cov), "features" or None, "n"} as numpy float64 arrays."""
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 feature vectors, got {self.n}")
        feats = torch.cat(self.features).numpy() if self.features is not None else None
        sigma = (self.m2 / (self.n - 1)).cpu().numpy()
        return {"mu": self.mean.cpu().numpy(), "sigma": sigma, "features": feats, "n": self.n}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """pytorch-fid's Frechet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)."""
    calculate_frechet_distance = optional_import("pytorch_fid.fid_score", "FID").calculate_frechet_distance

    with warnings.catch_warnings():  # pytorch-fid passes sqrtm's `disp`, deprecated in scipy 1.16 (still correct)
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def kernel_inception_distance(
    feats1: np.ndarray, feats2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets
    of min(subset_size, n1, n2) features from each side (Binkowski et al. 2018). Returns (mean, std)."""
    n1, n2 = len(feats1), len(feats2)
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 features on each side, got {n1} and {n2}")
    d = feats1.shape[1]
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        x = feats1[rng.choice(n1, m, replace=False)].astype(np.float64)
        y = feats2[rng.choice(n2, m, replace=False)].astype(np.float64)
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = m * (m - 1)
        scores.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(scores)), float(np.std(scores))


def save_stats(path: str | os.PathLike, stats: dict, protocol: dict) -> None:
    """Reference statistics as .npz: `mu`, `sigma` (the keys of GAN Compression's published files), `features`
    when kept (for KID), and `protocol` (JSON: split, images, size, ...). Written to a temporary file, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": stats["mu"], "sigma": stats["sigma"], "protocol": np.array(json.dumps(protocol))}
    if stats.get("features") is not None:
        arrays["features"] = stats["features"]
    write_bytes_atomic(path, lambda f: np.savez(f, **arrays))


def load_stats(path: str | os.PathLike) -> dict:
    """Reference statistics from .npz: ours, or GAN Compression's published files (keys `mu`, `sigma` only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID statistics file {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        missing = {"mu", "sigma"} - set(z.files)
        if missing:
            raise ValueError(f"FID statistics file {path} lacks {sorted(missing)}; it has {sorted(z.files)}")
        mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"FID statistics file {path}: mu {mu.shape} and sigma {sigma.shape} do not match")
        features = z["features"] if "features" in z.files else None
        protocol = json.loads(str(z["protocol"])) if "protocol" in z.files else {"source": str(path)}
    return {"mu": mu, "sigma": sigma, "features": features, "protocol": protocol}


# ------------------------------------------------------------------------------------------------- model size


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_flops_torchprofile(
    x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding=None, groups=1, *, out_shape, **kwargs
) -> int:
    """2 x MACs of a convolution in torchprofile's convention: every *output* element costs in_channels / groups x
    kernel area, for transposed convolutions too (FlopCounterMode's own formula charges those per input element,
    which gives 49.6 G instead of the papers' 56.8 G for resnet_9blocks)."""
    c_in = w_shape[0] // groups if transposed else w_shape[1]
    return 2 * math.prod(out_shape) * c_in * math.prod(w_shape[2:])


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter(convention: str = "actual"):
    """A `torch.utils.flop_counter.FlopCounterMode` (convolutions, matmuls, fused attention, forward and backward;
    norms and activations are free) that also counts the CPU's fused attention, which torch's registry leaves out.
    convention "torchprofile" charges a transposed convolution per output element, as the papers' "56.8 G" and
    "1.41 G" do; "actual" charges the work done (per input element), what a rate against the device's peak needs."""
    from torch.utils.flop_counter import FlopCounterMode

    if convention not in ("torchprofile", "actual"):
        raise ValueError(f"convention must be 'torchprofile' or 'actual', got {convention!r}")
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    }
    if convention == "torchprofile":
        mapping |= {aten.convolution: _conv_flops_torchprofile, aten._convolution: _conv_flops_torchprofile}
    return FlopCounterMode(display=False, custom_mapping=mapping)


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: Tensor, convention: str = "torchprofile") -> int:
    """Multiply-accumulates of one forward (MACs = FLOPs / 2), counted by `flop_counter(convention)`."""
    with flop_counter(convention) as counter:
        model(*inputs)
    return counter.get_total_flops() // 2


# ------------------------------------------------------------------------------------------------- latency


def compute_peak_gflops(device: str | torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """The device's practical compute peak in GFLOP/s, the best of `repeats` after a warm-up of: a large matmul, and
    on a CPU also a large 3x3 convolution in channels_last (oneDNN's kernels; MKL's sgemm does not reach the AVX-512
    peak on every CPU). What the deploy paths' rates are measured against."""
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    n = 4096 if device.type == "cuda" else 1536
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    work = [(2 * n**3, lambda: a @ b)]
    if device.type == "cpu":
        x = torch.randn(4, 256, 64, 64, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        work.append((2 * 256 * 256 * 9 * 64 * 64 * 4, lambda: torch.nn.functional.conv2d(x, w, padding=1)))
    best = 0.0
    with torch.no_grad():
        for flops, fn in work:
            for i in range(repeats + 1):
                sync()
                t = time.perf_counter()
                fn()
                sync()
                if i:
                    best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


@contextlib.contextmanager
def ieee_fp32(device: torch.device):
    """fp32 convolutions and matmuls in full precision on CUDA (cuDNN's default for convolutions is TF32)."""
    if device.type != "cuda":
        yield
        return
    knobs = [torch.backends.cudnn.conv, torch.backends.cuda.matmul]
    saved = [k.fp32_precision for k in knobs]
    try:
        for k in knobs:
            k.fp32_precision = "ieee"
        yield
    finally:
        for k, s in zip(knobs, saved, strict=True):
            k.fp32_precision = s


def time_paths(runs: dict[str, Callable[[Tensor], Tensor]], x: Tensor, rounds: int, turn: int = 5,
               settle: int = 2) -> dict[str, float]:  # fmt: skip
    """Median seconds of `rounds` timed calls of each callable on x. The callables take turns of `settle` untimed
    then `turn` timed back-to-back calls, so that the machine's load falls on all of them alike, while no call is
    timed right after another path's: onnxruntime's and OpenMP's worker threads spin for a while after a call, and
    on 2 cores a path timed inside that window (as a call-by-call alternation does) loses a core to them (measured:
    the deploy path's 24 ms became 68 ms beside an onnxruntime session)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in runs}
    # every path in full fp32 on CUDA, as deploy runs (cuDNN's default would give the others TF32 convolutions)
    with torch.no_grad(), ieee_fp32(x.device):
        while any(len(ts) < rounds for ts in times.values()):
            for name, run in runs.items():
                if len(times[name]) >= rounds:
                    continue
                for i in range(settle + min(turn, rounds - len(times[name]))):
                    sync()
                    t = time.perf_counter()
                    run(x)
                    sync()
                    if i >= settle:
                        times[name].append(time.perf_counter() - t)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    brand = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                brand = line.split(":", 1)[1].strip()
                break
    return f"{brand} ({torch.get_num_threads()} threads)"


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    size: int,
    device: str | torch.device = "cpu",
    batch_sizes=(1, 8),
    dtypes=("fp32", "bf16"),
    warmup: int = 5,
    runs: int = 20,
) -> list[dict]:
    """Forward time of `model` on random (batch, 3, size, size) inputs: `warmup` untimed calls, then the median of
    `runs` calls, each synchronised on CUDA. bf16 casts a copy of the model and the input (weights and activations
    in bf16, as deployed). Returns one row per (dtype, batch): median_ms, images_per_s, device."""
    device = torch.device(device)
    kinds = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for d in dtypes:
        if d not in kinds:
            raise ValueError(f"latency dtypes must be among {tuple(kinds)}, got {d!r}")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for name in dtypes:
        net = (model if name == "fp32" else copy.deepcopy(model)).to(device=device, dtype=kinds[name]).eval()
        for batch in batch_sizes:
            x = torch.randn(batch, 3, size, size, device=device, dtype=kinds[name])
            for _ in range(warmup):
                net(x)
            times = []
            for _ in range(runs):
                sync()
                t = time.perf_counter()
                net(x)
                sync()
                times.append(time.perf_counter() - t)
            median = statistics.median(times)
            rows.append(
                {
                    "dtype": name,
                    "batch": batch,
                    "size": size,
                    "median_ms": median * 1e3,
                    "images_per_s": batch / median,
                    "runs": runs,
                    "device": device_name(device),
                }
            )
    return rows
