"""Data: aligned folders (pix2pix: one A|B image per sample), unaligned folders (CycleGAN: trainA/ and trainB/), single
folders (inputs only, as the peers' test scripts read `testA/` or `valA/`), and the built-in sample sets (edges ->
photo crops, and the demo's region-split photo -> sketch tiles, both from the photographs that scikit-image ships).

Layouts (those of pix2pix, CycleGAN, GAN Compression and OMGD):
    aligned:    ROOT/train/*.png, ROOT/test/*.png (or ROOT/val/: edges2shoes, maps, facades and cityscapes ship
                train/ and val/), each image A and B side by side (`direction` picks which is input)
    unaligned:  ROOT/trainA, ROOT/trainB, ROOT/testA, ROOT/testB (or valA, valB)
    single:     ROOT/*.png, the inputs alone (no targets: no PSNR/SSIM; FID against given statistics)
Images are found in sub-folders too, by the peers' extensions (.jpg .jpeg .png .ppm .bmp .tif .tiff .webp, any case).

Augmentation (train): resize to `load_size`, random `crop_size` crop, random horizontal flip; the same crop and
flip for A and B of a pair. Evaluation: resize to `crop_size`. The random draws of sample `i` in epoch `e` come from
a generator seeded by (seed, e, i), so the data a step sees does not depend on workers or on resuming.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")  # the peers' list, any case
DIRECTIONS = ("AtoB", "BtoA")
MODES = ("aligned", "unaligned", "single")
EVAL_PHASES = ("test", "val")  # the evaluation split: the first present
SIZE_MULTIPLE = 4  # the ResNet generators halve the resolution twice
MAX_SIZE = 4096  # the largest --load-size / --crop-size (a run config read from a file is checked against it too)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files under `folder` (sub-folders included, linked ones too), sorted; FileNotFoundError/ValueError
    naming the folder when there are none. A folder reached twice (a link loop, two links to one folder) is walked
    once, and a file reached by two paths (links, hard links) is listed once, by the first of its paths in order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (or is not a directory)")
    walked, found = set(), []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        here = os.stat(parent)
        if (here.st_dev, here.st_ino) in walked:
            dirs[:] = []
            continue
        walked.add((here.st_dev, here.st_ino))
        dirs.sort()
        found += [Path(parent, name) for name in names if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    files, seen = [], set()
    for path in sorted(found):
        try:
            st = path.stat()  # the file a link points to; a dangling link is no image
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append(path)
    if not files:
        raise ValueError(f"image folder {folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def evaluation_phase(root: str | os.PathLike, mode: str, direction: str = "AtoB") -> str:
    """The split to evaluate on: "test" when `root` has it, else "val" (edges2shoes, maps, facades and cityscapes
    ship no test split); FileNotFoundError naming the folders looked for when neither is there."""
    root = Path(root)
    src = "A" if direction == "AtoB" else "B"
    looked = []
    for phase in EVAL_PHASES:
        folder = root / (phase if mode == "aligned" else f"{phase}{src}")
        if folder.is_dir():
            return phase
        looked.append(str(folder))
    raise FileNotFoundError(f"no evaluation split in {root}: looked for {' and '.join(looked)}")


def read_image(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image (high-bit-depth and float images scaled to 8 bits: `eight_bit`); ValueError naming the path
    when the file cannot be decoded or holds values no image has."""
    try:
        with Image.open(path) as im:
            return eight_bit(im).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


SIXTEEN_BIT_MAX = 65535


def eight_bit(im: Image.Image) -> Image.Image:
    """`im` with 8-bit values where it has more: integers (modes I;16* of 16-bit PNGs and TIFFs, and I, 32-bit, taken
    as 16-bit values as older PIL read 16-bit PNGs) scaled from 0..65535, floats (mode F, e.g. a 32-bit TIFF) from
    0..1; PIL's convert("RGB") would clip them (a 16-bit image comes out near white, a float one black). ValueError
    saying what it holds for values outside those ranges or not finite (the caller names the file)."""
    if im.mode not in ("F", "I") and not im.mode.startswith("I;16"):
        return im
    values = np.asarray(im)
    top, kind = (1.0, "float") if im.mode == "F" else (SIXTEEN_BIT_MAX, "integer")
    if not np.isfinite(values).all():
        raise ValueError(f"holds {kind} values (mode {im.mode}) that are not finite (NaN or inf)")
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low < 0 or high > top:
        raise ValueError(f"holds {kind} values (mode {im.mode}) in [{low:g}, {high:g}]; expected them in [0, {top:g}]")
    return Image.fromarray(np.rint(values.astype(np.float64) * (255 / top)).astype(np.uint8))  # mode L


MIN_IMAGE_SIDE = 2  # smaller images are reported as bad (an aligned pair needs two columns)


def check_image(path: str | os.PathLike, pair: bool = False) -> str:
    """Why `path` cannot be trained on ("" when it can): PIL cannot identify or fully decode it (empty, random bytes,
    truncated), it holds values `eight_bit` refuses, or it is smaller than MIN_IMAGE_SIDE a side (an aligned A|B
    pair: per half). JPEGs decode in draft mode (1/8 scale), which still reads the whole stream."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
            try:
                eight_bit(im)
            except ValueError as e:
                return str(e)
    except Exception as e:  # PIL raises many types for bad bytes (OSError, SyntaxError, ValueError, struct.error)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"cannot be decoded ({first})"
    if min(w // 2 if pair else w, h) < MIN_IMAGE_SIDE:
        return f"is {w}x{h} px{' (an A|B pair side by side)' if pair else ''}: too small"
    return ""


def check_images(
    paths: list[Path], pair: bool = False, progress: bool = False, threads: int = 0
) -> list[tuple[Path, str]]:
    """[(path, reason)] of the images `check_image` rejects, checked in parallel threads (PIL decodes without the
    GIL); a progress bar when `progress` and there are many."""
    from concurrent.futures import ThreadPoolExecutor

    threads = threads or min(16, (os.cpu_count() or 1) * 2)
    bar = None
    if progress and len(paths) >= 2000:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="checking images", mininterval=1.0)
    bad = []
    with ThreadPoolExecutor(threads) as pool:
        for path, reason in zip(paths, pool.map(lambda p: check_image(p, pair), paths, chunksize=64), strict=True):
            if reason:
                bad.append((path, reason))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return bad


def names_digest(paths: list[Path], root: str | os.PathLike) -> str:
    """A digest of the file names under `root` (relative, sorted): what a checkpoint records of its training set."""
    import hashlib

    # os.fsencode: a name that is not UTF-8 (bytes Python keeps as surrogates) is hashed as the bytes it is
    names = sorted(os.fsencode(Path(p).relative_to(root)) for p in paths)
    return hashlib.sha256(b"\n".join(names)).hexdigest()[:16]


def to_tensor(im: Image.Image) -> Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    return from_uint8(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))


def from_uint8(x: Tensor) -> Tensor:
    """uint8 image values -> floats in [-1, 1], the generators' input scale (any layout)."""
    return x.float().div(127.5).sub(1.0)


def to_uint8(x: Tensor) -> Tensor:
    """The inverse of `to_tensor` for real images: [-1, 1] floats back to the uint8 values they were read from
    (rounded, so exact). Generated images are quantised by `metrics.quantize`, the peers' way."""
    return ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class _Augment:
    """Resize, crop and flip with one draw per sample, applied identically to every image of the sample."""

    def __init__(self, load_size: int, crop_size: int, train: bool, flip: bool = True):
        if crop_size < SIZE_MULTIPLE or crop_size % SIZE_MULTIPLE:
            raise ValueError(
                f"--crop-size must be a positive multiple of {SIZE_MULTIPLE} (the generators halve the resolution "
                f"twice and double it back), got {crop_size}"
            )
        if crop_size > load_size:
            raise ValueError(f"crop_size={crop_size} must be <= load_size={load_size}")
        self.load_size, self.crop_size, self.train, self.flip = load_size, crop_size, train, flip

    def __call__(self, images: list[Image.Image], rng: np.random.Generator) -> list[Tensor]:
        if not self.train:
            size = (self.crop_size, self.crop_size)
            return [to_tensor(im.resize(size, Image.BICUBIC)) for im in images]
        s, c = self.load_size, self.crop_size
        x, y = int(rng.integers(0, s - c + 1)), int(rng.integers(0, s - c + 1))
        flip = bool(rng.random() < 0.5) and self.flip  # drawn either way: the same stream with flips off
        out = []
        for im in images:
            im = im.resize((s, s), Image.BICUBIC).crop((x, y, x + c, y + c))
            if flip:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(to_tensor(im))
        return out


class _EpochSeeded(Dataset):
    """What both folder layouts share: the arguments, the augmentation, and a random stream per (epoch, index)."""

    paired: bool
    INPUTS: str  # the attribute holding the input image files, one per sample

    def __init__(
        self,
        root: str | os.PathLike,
        phase: str = "train",
        direction: str = "AtoB",
        load_size: int = 286,
        crop_size: int = 256,
        train: bool = True,
        seed: int = 0,
        flip: bool = True,
    ):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.root, self.phase, self.direction, self.train = Path(root), phase, direction, train
        self.augment = _Augment(load_size, crop_size, train, flip)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def image_files(self) -> list[Path]:
        """Every image file this dataset reads."""
        return [*getattr(self, self.INPUTS), *getattr(self, "files_b", [])]

    def without(self, bad: set[Path]) -> _EpochSeeded:
        """This dataset without the files in `bad` (its sample order is then a function of the rest and the seed);
        ValueError when no input or no target image is left."""
        part = copy.copy(self)
        for name in (self.INPUTS, "files_b"):
            if hasattr(self, name):
                kept = [p for p in getattr(self, name) if p not in bad]
                if not kept:
                    raise ValueError(f"no readable image left in {Path(getattr(self, name)[0]).parent}")
                setattr(part, name, kept)
        return part

    def as_evaluation(self) -> _EpochSeeded:
        """This dataset's samples without augmentation (resized whole to the crop size)."""
        view = copy.copy(self)
        view.train = False
        view.augment = _Augment(self.augment.load_size, self.augment.crop_size, False, self.augment.flip)
        return view

    def split(self, n: int, seed: int = 0) -> tuple[_EpochSeeded, _EpochSeeded]:
        """(rest, held_out): `n` samples (by input image, drawn with `seed`) held out for validation, evaluated
        without augmentation; the rest keeps this dataset's augmentation. For `--select-on val`."""
        files = getattr(self, self.INPUTS)
        if not 0 < n < len(files):
            raise ValueError(f"validation size must be in [1, {len(files) - 1}] for {len(files)} samples, got {n}")
        order = np.random.default_rng([seed, 7919]).permutation(len(files))
        parts = []
        for index, train in ((sorted(order[n:]), self.train), (sorted(order[:n]), False)):
            part = copy.copy(self) if train else self.as_evaluation()
            setattr(part, self.INPUTS, [files[i] for i in index])
            parts.append(part)
        return parts[0], parts[1]


class AlignedDataset(_EpochSeeded):
    """pix2pix layout: `ROOT/PHASE/*.png`, each image the pair A|B side by side."""

    paired = True
    INPUTS = "files"

    def __init__(self, root: str | os.PathLike, phase: str = "train", **kw):
        super().__init__(root, phase, **kw)
        self.files = list_images(self.root / phase)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        ab = read_image(path)
        w, h = ab.size
        if w < 2:
            raise ValueError(f"aligned image {path} is {w}x{h}; expected A and B side by side (width >= 2)")
        a, b = ab.crop((0, 0, w // 2, h)), ab.crop((w // 2, 0, w, h))
        if self.direction == "BtoA":
            a, b = b, a
        a, b = self.augment([a, b], self._rng(index))
        return {"A": a, "B": b, "index": index}


class UnalignedDataset(_EpochSeeded):
    """CycleGAN layout: `ROOT/PHASE` + "A" and + "B" with unrelated images; sample i is A[i] and a random B
    (when `train`; in evaluation B[i % len(B)], which is the pair when the test folders are aligned by name)."""

    paired = False
    INPUTS = "files_a"

    def __init__(self, root: str | os.PathLike, phase: str = "train", **kw):
        super().__init__(root, phase, **kw)
        src, dst = ("A", "B") if self.direction == "AtoB" else ("B", "A")
        self.files_a = list_images(self.root / f"{phase}{src}")
        self.files_b = list_images(self.root / f"{phase}{dst}")

    def __len__(self) -> int:
        return len(self.files_a)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        j = int(rng.integers(0, len(self.files_b))) if self.train else index % len(self.files_b)
        a = self.augment([read_image(self.files_a[index])], rng)[0]
        b = self.augment([read_image(self.files_b[j])], rng)[0]
        return {"A": a, "B": b, "index": index}


class SingleDataset(_EpochSeeded):
    """The peers' `single` mode: `ROOT` itself is a folder of inputs (e.g. `horse2zebra/valA`), no targets;
    `phase` and `direction` are only recorded."""

    paired = False
    single = True
    INPUTS = "files"

    def __init__(self, root: str | os.PathLike, phase: str = "", **kw):
        super().__init__(root, phase, **kw)
        self.files = list_images(self.root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        a = self.augment([read_image(self.files[index])], self._rng(index))[0]
        return {"A": a, "index": index}


def make_dataset(
    root: str | os.PathLike,
    mode: str,
    phase: str = "train",
    train: bool = True,
    direction: str = "AtoB",
    load_size: int = 286,
    crop_size: int = 256,
    seed: int = 0,
    flip: bool = True,
) -> AlignedDataset | UnalignedDataset | SingleDataset:
    """`mode`: "aligned", "unaligned" or "single" (`root` is the folder of inputs); `flip`: random horizontal flips
    when `train`."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist (or is not a directory)")
    kinds = {"aligned": AlignedDataset, "unaligned": UnalignedDataset, "single": SingleDataset}
    if mode not in kinds:
        raise ValueError(f"dataset mode must be one of {MODES}, got {mode!r}")
    root_path = Path(root)
    if mode == "aligned" and not (root_path / phase).is_dir() and (root_path / f"{phase}A").is_dir():
        raise FileNotFoundError(
            f"image folder {root_path / phase} does not exist: {root} holds unaligned data ({phase}A/, {phase}B/), "
            f"and this run reads aligned pairs ({phase}/ with A|B "
            "side by side, pix2pix's layout): use --model cyclegan for unpaired data, or give an aligned folder"
        )
    if mode == "unaligned" and not (root_path / f"{phase}A").is_dir() and (root_path / phase).is_dir():
        raise FileNotFoundError(
            f"image folder {root_path / (phase + 'A')} does not exist: {root} holds aligned pairs ({phase}/), and this "
            f"run reads unaligned folders ({phase}A/, {phase}B/, "
            "CycleGAN's layout): use --model pix2pix for paired data, or --dataset-mode aligned"
        )
    return kinds[mode](
        root, phase, direction=direction, load_size=load_size, crop_size=crop_size, train=train, seed=seed, flip=flip
    )


# ------------------------------------------------------------------------------------------- the sample set

# Colour photographs bundled with scikit-image (no download). The split is by photograph: a test photo never
# contributes a training crop.
SAMPLE_TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle")
SAMPLE_TEST_PHOTOS = ("chelsea", "coffee")
SAMPLE_SET_VERSION = 1


def _is_built(root: Path, meta: dict) -> bool:
    """Whether root holds a generated set built with exactly these settings (its meta.json, written last)."""
    meta_file = root / "meta.json"
    return meta_file.is_file() and json.loads(meta_file.read_text()) == json.loads(json.dumps(meta))


def _mark_built(root: Path, meta: dict) -> None:
    (root / "meta.json").write_text(json.dumps(meta, indent=1))


def _photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def _edges(photo: np.ndarray, sigma: float) -> np.ndarray:
    """Canny edges as a pix2pix edges image: black lines on white, 3 channels."""
    from skimage.color import rgb2gray
    from skimage.feature import canny

    lines = canny(rgb2gray(photo), sigma=sigma)
    return np.repeat(np.where(lines, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _crops(photo: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n random size x size crops, each at a random scale (the crop covers 1/3 to 3/4 of the shorter side)."""
    im = Image.fromarray(photo)
    out = []
    for _ in range(n):
        short = min(im.size)
        side = int(short * rng.uniform(1 / 3, 3 / 4))
        x = int(rng.integers(0, im.size[0] - side + 1))
        y = int(rng.integers(0, im.size[1] - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(np.asarray(crop))
    return out


def build_sample_set(
    root: str | os.PathLike,
    size: int = 72,
    train_per_photo: int = 48,
    test_per_photo: int = 24,
    unpaired: bool = False,
    seed: int = 0,
    sigma: float = 1.5,
) -> Path:
    """Writes the edges -> photo sample set under `root` (once: a matching `meta.json` means it is there) and returns
    `root`. Paired: `train/` and `test/` hold A|B images (A = Canny edges, B = photo). Unpaired: `trainA/` and
    `trainB/` hold the edges and photos of *different* crops; `testA/`/`testB/` stay aligned by name for scoring."""
    root = Path(root)
    meta = {
        "version": SAMPLE_SET_VERSION,
        "size": size,
        "train_per_photo": train_per_photo,
        "test_per_photo": test_per_photo,
        "unpaired": unpaired,
        "seed": seed,
        "sigma": sigma,
        "train_photos": SAMPLE_TRAIN_PHOTOS,
        "test_photos": SAMPLE_TEST_PHOTOS,
    }
    if _is_built(root, meta):
        return root
    rng = np.random.default_rng(seed)
    for phase, photos, n in (
        ("train", SAMPLE_TRAIN_PHOTOS, train_per_photo),
        ("test", SAMPLE_TEST_PHOTOS, test_per_photo),
    ):
        pairs = []
        for name in photos:
            pairs += [
                (f"{name}_{i:03d}", c, _edges(c, sigma)) for i, c in enumerate(_crops(_photo(name), n, size, rng))
            ]
        if unpaired:
            folder_a, folder_b = root / f"{phase}A", root / f"{phase}B"
            folder_a.mkdir(parents=True, exist_ok=True)
            folder_b.mkdir(parents=True, exist_ok=True)
            # Training: edges of the even crops, photos of the odd ones, so no file in trainB is trainA's partner.
            a_items, b_items = (pairs[0::2], pairs[1::2]) if phase == "train" else (pairs, pairs)
            for stem, _, edges in a_items:
                Image.fromarray(edges).save(folder_a / f"{stem}.png")
            for stem, photo, _ in b_items:
                Image.fromarray(photo).save(folder_b / f"{stem}.png")
        else:
            folder = root / phase
            folder.mkdir(parents=True, exist_ok=True)
            for stem, photo, edges in pairs:
                Image.fromarray(np.concatenate([edges, photo], axis=1)).save(folder / f"{stem}.png")
    _mark_built(root, meta)
    return root


# ------------------------------------------------------------------------------------------- the demo's tile set

# Tiles of the colour photographs bundled with scikit-image (no download), split by region as map->aerial splits a
# city: the right `holdout` fraction of every photograph gives the test tiles, the rest the training tiles, so no
# test pixel is ever seen in training while both splits share the photographs' look.
TILE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "motorcycle", "immunohistochemistry", "retina", "hubble_deep_field",
)  # fmt: skip
TILE_SET_VERSION = 2
# The sketch: strokes where the grey photo's gradient magnitude (after a Gaussian blur of SKETCH_SIGMA px) is high.
# Below the photo's SKETCH_QUANTILES[0] quantile the page stays white, above SKETCH_QUANTILES[1] the stroke is black,
# linear between; a blur of SKETCH_SOFTEN px softens the strokes. Quantiles per photograph, so every photograph has
# the same share of ink whatever its contrast.
SKETCH_SIGMA = 1.0
SKETCH_QUANTILES = (0.75, 0.97)
SKETCH_SOFTEN = 0.7


def _scaled_photo(name: str, short_side: int) -> np.ndarray:
    im = Image.fromarray(_photo(name))
    scale = short_side / min(im.size)
    return np.asarray(im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.LANCZOS))


def photo_sketch(photo: np.ndarray) -> np.ndarray:
    """A line drawing of `photo` (H x W x 3 uint8): a white page with dark, soft strokes along its edges, H x W x 3
    uint8 grey (the constants above)."""
    from scipy import ndimage
    from skimage.color import rgb2gray

    if not isinstance(photo, np.ndarray) or photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        got = f"{photo.dtype} array of shape {photo.shape}" if isinstance(photo, np.ndarray) else type(photo).__name__
        raise ValueError(f"photo must be an H x W x 3 uint8 array, got {got}")
    grey = ndimage.gaussian_filter(rgb2gray(photo), SKETCH_SIGMA)
    magnitude = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
    low, high = np.quantile(magnitude, SKETCH_QUANTILES)
    ink = np.clip((magnitude - low) / max(high - low, 1e-12), 0, 1)
    ink = ndimage.gaussian_filter(ink, SKETCH_SOFTEN)
    page = np.round(255 * (1 - ink)).astype(np.uint8)
    return np.repeat(page[..., None], 3, axis=2)


def build_tile_set(
    root: str | os.PathLike,
    tile: int = 72,
    test_tile: int = 64,
    stride: int = 16,
    holdout: float = 0.25,
    short_side: int = 288,
    val: float = 0.0,
) -> Path:
    """Writes the demo's photo -> sketch tile set under `root` (once: a matching `meta.json` means it is there) and
    returns `root`: `train/` and `test/` hold A|B images (aligned layout), A a tile of a photograph of TILE_PHOTOS
    scaled to `short_side`, B the same tile of the photograph's sketch (`photo_sketch`, drawn from the whole
    photograph). Training tiles (`tile` px, every `stride` px) lie in the left 1 - `holdout` of each photograph, test
    tiles (`test_tile` px, not overlapping) in the rest, a gap of `test_tile // 8` px between them. With `val` > 0
    the band of that fraction of the width just left of the test region gives `val/` tiles (as the test tiles, gaps
    on both sides), for choices that must not look at the test split; training keeps the rest."""
    for name, value in (("tile", tile), ("test_tile", test_tile), ("stride", stride), ("short_side", short_side)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    if not 0 <= val < 1 - holdout:
        raise ValueError(f"val must be a fraction in [0, 1 - holdout), got {val!r}")
    if max(tile, test_tile) > short_side:
        raise ValueError(f"tile={tile} and test_tile={test_tile} must be <= short_side={short_side}")
    root = Path(root)
    meta = {
        "version": TILE_SET_VERSION,
        "task": "sketch",
        "sketch": {"sigma": SKETCH_SIGMA, "quantiles": SKETCH_QUANTILES, "soften": SKETCH_SOFTEN},
        "tile": tile,
        "test_tile": test_tile,
        "stride": stride,
        "holdout": holdout,
        "short_side": short_side,
        "photos": TILE_PHOTOS,
    } | ({"val": val} if val else {})
    if _is_built(root, meta):
        return root
    photos = {name: _scaled_photo(name, short_side) for name in TILE_PHOTOS}
    gap = test_tile // 8
    cut = {name: int(p.shape[1] * (1 - holdout)) for name, p in photos.items()}
    val_cut = {name: int(p.shape[1] * (1 - holdout - val)) for name, p in photos.items()}
    for name, p in photos.items():
        if p.shape[1] - cut[name] - gap < test_tile or val_cut[name] < tile:
            raise ValueError(f"photograph {name} ({p.shape[1]} px wide) holds no {test_tile} px test tile at "
                             f"holdout={holdout}; raise holdout or short_side")  # fmt: skip
        if val and cut[name] - val_cut[name] - 2 * gap < test_tile:
            raise ValueError(f"photograph {name} ({p.shape[1]} px wide) holds no {test_tile} px val tile at "
                             f"val={val}; raise val or short_side")  # fmt: skip
    for phase in ("train", "test", "val") if val else ("train", "test"):
        (root / phase).mkdir(parents=True, exist_ok=True)
    for name, p in photos.items():
        sketch = photo_sketch(p)
        height, width = p.shape[:2]
        train_end = val_cut[name] - gap if val else cut[name]
        windows = [
            ("train", y, x, tile)
            for y in range(0, height - tile + 1, stride)
            for x in range(0, train_end - tile + 1, stride)
        ]
        bands = [("test", cut[name] + gap, width)] + ([("val", val_cut[name] + gap, cut[name] - gap)] if val else [])
        windows += [
            (phase, y, x, test_tile)
            for phase, start, stop in bands
            for y in range(0, height - test_tile + 1, test_tile)
            for x in range(start, stop - test_tile + 1, test_tile)
        ]
        for phase, y, x, size in windows:
            pair = np.concatenate([p[y : y + size, x : x + size], sketch[y : y + size, x : x + size]], axis=1)
            Image.fromarray(pair).save(root / phase / f"{name}_{y:04d}_{x:04d}.png")
    _mark_built(root, meta)
    return root
