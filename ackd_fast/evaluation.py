"""Scoring generators: what the training loop and the report both use.

- `evaluate_generator`: PSNR/SSIM (paired data) and FID/KID of a generator on a split, streaming batch by batch.
- `reference_stats`: the real images' Inception statistics under the peers' protocol (GAN Compression's and OMGD's):
  paired tasks against the real test images, CycleGAN against the real train+test images of the target domain;
  `cached_reference_stats`: the same, kept in a cache (`fid_cache_dir`) under a checksum of the file list (paths,
  sizes, modification times) and the protocol (split, domain, size, Inception weights' sha256), reused while all of
  that is unchanged.
- `image_stats`, `ImageFiles`: Inception statistics of any image folder (`ackd-fast fid-stats`).
- `PeriodicEvaluation`: what the loop calls every `eval_every` steps, with the best step kept for `--select-on val`.

Selection: the peers pick their best checkpoint on the test split. `--select-on val` (train.py) picks ours on a split
carved from the training data instead. The report beside the published figures is `ackd_fast.report`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ackd_fast import data as data_lib
from ackd_fast import metrics

# --------------------------------------------------------------------------------------- progress

LONG_PASS_BATCHES = 8  # passes of more batches show progress (when asked)


def batches_with_progress(loader: DataLoader, desc: str):
    """The batches of `loader`; with `desc` and a long pass, a bar on a terminal (its rate gives the estimate), else
    one line after the first batch estimating the whole pass."""
    if not desc or len(loader) < LONG_PASS_BATCHES:
        yield from loader
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(loader, desc=desc, mininterval=1.0)
        return
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        yield batch
        if i == 0:
            left = (time.perf_counter() - start) * (len(loader) - 1)
            print(f"{desc}: {len(loader)} batches, about {left:.0f} s more", flush=True)


# --------------------------------------------------------------------------------------- real images


class ImageFiles(Dataset):
    """uint8 (3, size, size) images from files, resized as the datasets' evaluation transform does (bicubic);
    `size` None keeps each image's own size."""

    def __init__(self, files: list[Path], size: int | None = None):
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image

        im = data_lib.read_image(self.files[index])
        if self.size and im.size != (self.size, self.size):
            im = im.resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def real_target_images(dataset, phases=("train", "test")) -> Dataset:
    """The real target-domain images FID compares with: B of every pair of an aligned dataset (its own split), or
    for an unaligned one the target folders of `phases` (the peers use train+test)."""
    if dataset.paired:
        return _TargetsOf(dataset)
    if getattr(dataset, "single", False):
        raise ValueError(
            f"dataset mode single ({dataset.root}) has no target images for FID: pass --fid-stats (e.g. GAN "
            "Compression's real_stat/horse2zebra_B.npz) or --no-fid"
        )
    dst = "B" if dataset.direction == "AtoB" else "A"
    files = []
    for phase in phases:
        folder = dataset.root / f"{phase}{dst}"
        if folder.is_dir():
            files += data_lib.list_images(folder)
    if not files:
        raise FileNotFoundError(f"no real target images in {dataset.root} for phases {phases} (folders *{dst})")
    return ImageFiles(files, dataset.augment.crop_size)


class _TargetsOf(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        return data_lib.to_uint8(self.dataset[index]["B"])


@torch.no_grad()
def image_stats(
    images: Dataset, inception: nn.Module, batch_size: int = 50, keep_features: bool = True, workers: int = 0,
    progress: str = "",
) -> dict:
    """Inception statistics (and features, for KID) of a dataset of uint8 images (`progress`: see
    batches_with_progress)."""
    stats = metrics.FeatureStats(keep_features)
    for batch in batches_with_progress(DataLoader(images, batch_size=batch_size, num_workers=workers), progress):
        stats.update(metrics.inception_features(inception, batch))
    return stats.result()


# --------------------------------------------------------------------------------------- generators


@torch.no_grad()
def evaluate_generator(
    generator: nn.Module,
    dataset,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    inception: nn.Module | None = None,
    reference: dict | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    progress: str = "",
    on_batch=None,
) -> dict:
    """generator(A) over `dataset` (not shuffled): mean PSNR/SSIM against B when the data is paired, and FID/KID
    against `reference` (from `reference_stats` or `metrics.load_stats`) when `inception` is given. Images are
    dropped after their batch; only the 2048-d features are kept, for KID (when the reference has features).
    `progress`: a description, to show the progress of a long pass (batches_with_progress). `on_batch(indices,
    inputs, outputs, targets or None)` gets each batch's uint8 images as scored (evaluate --save-images)."""
    was_training = generator.training
    generator = generator.to(device).eval()
    if inception is not None and reference is None:
        raise ValueError("evaluate_generator: inception is given but reference is None; pass the real statistics")
    stats = metrics.FeatureStats(keep_features=reference is not None and reference.get("features") is not None)
    psnr, ssim, n = [], [], 0
    for batch in batches_with_progress(DataLoader(dataset, batch_size=batch_size, shuffle=False), progress):
        fake = metrics.quantize(generator(batch["A"].to(device)))
        n += fake.shape[0]
        if on_batch is not None:
            targets = data_lib.to_uint8(batch["B"]) if dataset.paired else None
            on_batch(batch["index"].tolist(), data_lib.to_uint8(batch["A"]), fake.cpu(), targets)
        if dataset.paired:
            p, s = metrics.psnr_ssim(fake.cpu(), data_lib.to_uint8(batch["B"]))
            psnr += p
            ssim += s
        if inception is not None:
            stats.update(metrics.inception_features(inception, fake))
    generator.train(was_training)
    scores: dict = {"images": n}
    if dataset.paired:
        scores |= {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}
    if inception is not None:
        fake_stats = stats.result()
        scores["fid"] = metrics.frechet_distance(
            fake_stats["mu"], fake_stats["sigma"], reference["mu"], reference["sigma"]
        )
        if fake_stats["features"] is not None:
            kid, kid_std = metrics.kernel_inception_distance(
                fake_stats["features"], reference["features"], kid_subsets, kid_subset_size
            )
            scores |= {"kid": kid, "kid_std": kid_std}
    return scores


def reference_stats(
    dataset, inception: nn.Module, batch_size: int = 50, phases=("train", "test"), progress: bool = False
) -> dict:
    """The real statistics for `dataset` under the peers' protocol, with the protocol recorded beside them."""
    real = real_target_images(dataset, phases)
    stats = image_stats(real, inception, batch_size, progress="FID reference statistics" if progress else "")
    stats["protocol"] = {"dataroot": str(dataset.root)} | _protocol(dataset, phases) | {"images": stats["n"]}
    return stats


def _protocol(dataset, phases) -> dict:
    """How the real statistics of `dataset` are made: which images, at which size."""
    return {
        "split": dataset.phase if dataset.paired else "+".join(phases),
        "domain": "B of each pair" if dataset.paired else ("B" if dataset.direction == "AtoB" else "A"),
        "size": dataset.augment.crop_size,
        "resize": "bicubic to size (evaluation transform), then bilinear to 299 inside pytorch-fid's InceptionV3",
    }


FID_CACHE_ENV = "ACKD_FAST_CACHE"  # the cache's root folder; default $XDG_CACHE_HOME/ackd_fast or ~/.cache/ackd_fast


def fid_cache_dir() -> Path:
    """Where cached_reference_stats keeps its files: $ACKD_FAST_CACHE/fid_stats, else under the user's cache."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get(FID_CACHE_ENV) or user_cache / "ackd_fast") / "fid_stats"


def _real_files(real: Dataset) -> list[Path]:
    """The image files a real_target_images dataset reads."""
    return list(real.dataset.image_files() if isinstance(real, _TargetsOf) else real.files)


def reference_key(dataset, phases, inception_sha256: str) -> tuple[str, dict]:
    """(the cache key, the protocol it stands for) of dataset's real statistics: a sha256 over the real files (their
    resolved paths, sizes and modification times, in order) and the protocol (split, domain, size, resize, the
    Inception weights' sha256)."""
    real = real_target_images(dataset, phases)
    listing = hashlib.sha256()
    for path in _real_files(real):
        st = path.stat()
        listing.update(os.fsencode(path.resolve()) + f"\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    protocol = _protocol(dataset, phases) | {"inception_sha256": inception_sha256, "files_sha256": listing.hexdigest()}
    key = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()
    return key, protocol


def cached_reference_stats(dataset, inception: nn.Module, inception_sha256: str, cache: str | os.PathLike | None = None,
                           batch_size: int = 50, phases=("train", "test"), progress: bool = False) -> dict:  # fmt: skip
    """reference_stats, from the cache when it holds them under the same key (reference_key), else computed and
    stored there (`cache`: the folder, default fid_cache_dir(); "none": no cache). The protocol records the key and
    whether they were reused ("cache": "reused PATH" / "computed, cached in PATH" / "off"); a cache that cannot be
    read or written is noted there and worked around."""
    if cache is not None and str(cache) == "none":
        stats = reference_stats(dataset, inception, batch_size, phases, progress)
        stats["protocol"]["cache"] = "off"
        return stats
    key, protocol = reference_key(dataset, phases, inception_sha256)
    path = Path(cache or fid_cache_dir()) / f"{key[:32]}.npz"
    if path.is_file():
        try:
            stats = metrics.load_stats(path)
        except (OSError, ValueError):
            stats = {"protocol": {}}  # unreadable: computed again and replaced below
        if stats["protocol"].get("key") == key:
            stats["protocol"]["cache"] = f"reused {path}"
            return stats
    stats = reference_stats(dataset, inception, batch_size, phases, progress)
    stats["protocol"] |= {"inception_sha256": protocol["inception_sha256"], "files_sha256": protocol["files_sha256"],
                          "key": key}  # fmt: skip
    try:
        metrics.save_stats(path, stats, stats["protocol"])
        stats["protocol"]["cache"] = f"computed, cached in {path}"
    except OSError as e:
        stats["protocol"]["cache"] = f"computed; not cached ({e})"
    return stats


# --------------------------------------------------------------------------------------- during training


class PeriodicEvaluation:
    """What the training loop calls every `eval_every` steps: scores the generator on `dataset` (split `split`), and
    with `select` tracks the best step by FID (when the Inception weights are there) or else PSNR (paired data).

    inception_weights: a file, or "" for the torch hub cache; training never downloads, and without weights it
    scores PSNR/SSIM only (a weights file that was named but is missing raises)."""

    def __init__(
        self,
        dataset,
        split: str,
        device: torch.device,
        inception_weights: str = "",
        select: bool = False,
        batch_size: int = 8,
        inception_sha256: str = metrics.INCEPTION_SHA256,
    ):
        self.dataset, self.split, self.device, self.batch_size = dataset, split, device, batch_size
        self.inception_sha256 = inception_sha256
        self.inception, self.reference, self.note = None, None, None
        try:
            self.inception = metrics.load_inception(inception_weights or None, device, False, inception_sha256)
        except metrics.InceptionWeightsError as e:
            if inception_weights:
                raise
            self.note = f"no FID/KID during training: {e}"
        self.metric = "fid" if self.inception is not None else ("psnr" if dataset.paired else None)
        if select and self.metric is None:
            raise ValueError(
                "select_on='val' on unpaired data needs FID, and no Inception weights were found: pass "
                f"--inception-weights PATH or put {metrics.INCEPTION_FILE} in {metrics.inception_cache_path().parent}"
            )
        self.select = select
        self.best: dict | None = None  # {"metric", "value", "step"}

    def __call__(self, generator: nn.Module, step: int) -> tuple[dict, bool]:
        """(scores, whether this step is the new best)."""
        if self.inception is not None and self.reference is None:
            # unpaired: the real side of a validation split is the training target folder; of the test split, the
            # peers' train+test
            phases = (self.dataset.phase,) if self.split == "val" else ("train", "test")
            self.reference = cached_reference_stats(self.dataset, self.inception, self.inception_sha256, phases=phases)
        scores = evaluate_generator(
            generator, self.dataset, self.device, self.batch_size, self.inception, self.reference
        )
        value = scores[self.metric] if self.metric else None
        better = value is not None and (
            self.best is None or (value < self.best["value"] if self.metric == "fid" else value > self.best["value"])
        )
        if self.select and better:
            self.best = {"metric": self.metric, "value": value, "step": step, "split": self.split}
        return scores, self.select and better

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
