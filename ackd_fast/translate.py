"""`ackd-fast translate`: a trained generator applied to a user's images.

    ackd-fast translate runs/distill/ckpt.pt --input photos/ more/x.jpg --output translated/ --index

The generator is any file `peers.read_generator` reads (a run's ckpt.pt / best.pt, an exported generator, a peer's
latest_net_G.pth). Inputs are image files and folders (searched recursively for every extension the datasets read,
`data.IMAGE_EXTENSIONS`). Each image is translated at its own size: padded (reflected) to the multiple of
`export.size_multiple` the generator needs and cropped back, so nothing is resized unless `size` asks (bicubic to
size x size, as the evaluation transform). Images of one size go through in batches. An output keeps its input's path
relative to the folder given (a file given alone: its name) and its name, format included; each is written
atomically. With `aligned`, each input is a pix2pix A|B pair: `direction` picks the half that is the input, the other
is the target, shown in the index page beside input and output.

Everything is checked before the first image is translated: the flags, the generator file, every image (an
unreadable one is named and skipped with a warning, or refused with `strict`), the output folder (not inside an
input folder, writable), and the outputs (none may exist unless `overwrite`, nor be an input, nor two be one file).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from ackd_fast import data as data_lib
from ackd_fast import metrics
from ackd_fast.assembly import check_device
from ackd_fast.checkpoint import check_writable, load_tensors, write_bytes_atomic
from ackd_fast.errors import UsageError
from ackd_fast.export import size_multiple
from ackd_fast.peers import GeneratorFile, load_into, read_generator
from ackd_fast.results_page import INDEX, write_index

AMP_CHOICES = ("none", "bf16")
DIRECTION_CHOICES = ("auto", *data_lib.DIRECTIONS)
INDEX_PICTURES = "index"  # the folder (in the output folder) of the index page's input and target halves of A|B pairs
# how each output format is saved: lossless where the format allows, JPEG at high quality without chroma subsampling
SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}}


@dataclass
class Job:
    """One image to translate: where it is read and written, and the index page's extra pictures (A|B pairs)."""

    source: Path
    output: Path
    name: str  # the path relative to the input folder given: the index page's row label
    size: tuple[int, int] = (0, 0)  # (width, height) of the input image (the input half of a pair)
    input_picture: Path | None = None  # A|B pairs: the input half, written for the index page
    target_picture: Path | None = None


# ----------------------------------------------------------------------------------------- the generator


def _other_direction(direction: str) -> str:
    return "BtoA" if direction == "AtoB" else "AtoB"


def _cyclegan_reverse(path: Path, g: GeneratorFile) -> nn.Module:
    """The other generator of a CycleGAN run checkpoint (its objective's `generator_b`); ValueError naming the file
    when it holds one generator only (best.pt, an exported generator, a distilled student)."""
    state = load_tensors(path).get("g")
    prefix = "generator_b."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} if isinstance(state, dict) else {}
    if not weights:
        raise ValueError(f"{path} holds the CycleGAN generator for {g.direction} only (a best.pt, an exported "
                         f"generator or a distilled student has one); the {_other_direction(g.direction)} one is in "
                         "the teacher run's ckpt.pt")  # fmt: skip
    reverse = g.spec.build(init="default", named_in=path)
    return load_into(reverse, weights, f"{path}'s CycleGAN generator_b", g.label).eval()


def pick_generator(checkpoint: str | os.PathLike, direction: str) -> tuple[nn.Module, str, dict]:
    """(generator, the direction the inputs are read in, what the file is) for `direction` ("auto", "AtoB",
    "BtoA"). A CycleGAN file needs a direction (its run holds both generators: the one it was not trained for is
    read from the run checkpoint's objective); a pix2pix generator maps the direction it was trained in, so another
    is refused."""
    path = Path(checkpoint)
    g = read_generator(path)
    trained = g.direction
    if g.objective == "cyclegan":
        if direction == "auto":
            raise UsageError(f"{path} is a CycleGAN generator: pass --direction AtoB or BtoA (its run trained "
                             f"{trained or 'an unknown direction'} as the main generator and holds both)")  # fmt: skip
        generator = g.generator if trained in (None, direction) else _cyclegan_reverse(path, g)
    else:
        if direction != "auto" and trained is not None and direction != trained:
            raise UsageError(f"--direction {direction}: {path} is a {g.objective or 'pix2pix'} generator trained "
                             f"{trained}; it maps that direction only")  # fmt: skip
        if direction == "auto":
            direction = trained or "AtoB"
        generator = g.generator
    first_conv = next((m for m in generator.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels != 3:
        raise ValueError(f"{path}: the generator takes {first_conv.in_channels}-channel images (its first "
                         "convolution); translate reads images as RGB, 3 channels")  # fmt: skip
    about = {"checkpoint": str(path), "generator": g.name, "ngf": g.ngf, "source": g.source, "direction": direction,
             "label": g.label}  # fmt: skip
    return generator, direction, about


# ----------------------------------------------------------------------------------------- the images


def gather_inputs(inputs: list[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """[(folder the relative path is taken from, image file)] of every --input, in order: the images under a folder
    (data.list_images), a file as it is. FileNotFoundError naming a missing one."""
    found = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found += [(path, f) for f in data_lib.list_images(path)]
        elif path.is_file():
            found.append((path.parent, path))
        else:
            raise FileNotFoundError(f"--input {given} does not exist")
    return found


def _format_of(path: Path) -> str:
    return Image.registered_extensions()[path.suffix.lower()]


def check_images(found: list[tuple[Path, Path]], aligned: bool, strict: bool) -> tuple[list, list[tuple[Path, str]]]:
    """(the readable images, [(file, why not)] of the others): a file whose name is no image's
    (data.IMAGE_EXTENSIONS), or that data.check_image refuses. With `strict` any such file is a ValueError naming
    every one; else each is named in a warning and skipped."""
    bad = []
    suffixed = []
    for root, path in found:
        if path.suffix.lower() not in data_lib.IMAGE_EXTENSIONS:
            bad.append((path, f"is not an image file (expected one of {', '.join(data_lib.IMAGE_EXTENSIONS)})"))
        else:
            suffixed.append((root, path))
    reasons = dict(data_lib.check_images([p for _, p in suffixed], pair=aligned))
    bad += list(reasons.items())
    good = [(root, path) for root, path in suffixed if path not in reasons]
    if bad and strict:
        listed = "; ".join(f"{p} {why}" for p, why in bad)
        raise ValueError(f"--strict: {len(bad)} of the {len(found)} inputs cannot be translated: {listed}")
    for path, why in bad:
        print(f"warning: skipping {path}: {why}", file=sys.stderr)
    if not good:
        raise ValueError(f"none of the {len(found)} inputs is a readable image")
    return good, bad


def plan_jobs(good: list[tuple[Path, Path]], output: Path, aligned: bool, index: bool, overwrite: bool) -> list[Job]:
    """Where each image goes. UsageError when two inputs would be written to one file, an output is an input, or an
    output exists (without `overwrite`)."""
    jobs, taken = [], {}
    input_files = {p.resolve() for _, p in good}
    for root, path in good:
        rel = path.relative_to(root)
        job = Job(path, output / rel, rel.as_posix())
        if aligned and index:
            stem = output / INDEX_PICTURES / rel.parent / rel.stem
            job.input_picture = stem.with_name(stem.name + "_input.png")
            job.target_picture = stem.with_name(stem.name + "_target.png")
        jobs.append(job)
    targets = [output / INDEX] if index else []
    for job in jobs:
        for target in (job.output, job.input_picture, job.target_picture):
            if target is None:
                continue
            key = target.resolve()
            if key in taken:
                raise UsageError(f"--output {output}: {taken[key]} and {job.source} would both be written to "
                                 f"{target}; translate them into separate --output folders")  # fmt: skip
            taken[key] = job.source
            if key in input_files:
                raise UsageError(f"--output {output}: {target} is an input; choose another --output")
            targets.append(target)
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise UsageError(f"--output {output}: {len(existing)} of the files it would write exist ({existing[0]}"
                         f"{', ...' if len(existing) > 1 else ''}); they are kept: add --overwrite to replace them, or "
                         "choose another --output")  # fmt: skip
    for target in existing:
        if target.is_dir():
            raise UsageError(f"--output {output}: {target} is a folder; an output image would replace it")
    return jobs


def check_output(output: Path, inputs: list[Path]) -> None:
    """UsageError when --output is a file or lies in (or is) an input folder: the outputs would become inputs."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; it must be a folder")
    for given in inputs:
        if given.is_dir() and output.resolve().is_relative_to(given.resolve()):
            raise UsageError(f"--output {output} lies inside the input folder {given}: a later run would read its "
                             "outputs as inputs; choose a folder outside it")  # fmt: skip


def read_pair(path: Path, aligned: bool, direction: str) -> tuple[Image.Image, Image.Image | None]:
    """(input, target or None) of an image file: with `aligned`, its A|B halves by `direction`."""
    im = data_lib.read_image(path)
    if not aligned:
        return im, None
    w, h = im.size
    a, b = im.crop((0, 0, w // 2, h)), im.crop((w // 2, 0, w, h))
    return (a, b) if direction == "AtoB" else (b, a)


def padded(x: Tensor, multiple: int) -> Tensor:
    """x (B, C, H, W) padded at the bottom and right to multiples of `multiple`: reflected where the image is
    large enough, else its edge repeated."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def fast_method(device: torch.device, dtype: torch.dtype) -> str:
    """The `deploy` path --fast takes: deploy's "auto" without its OpenVINO candidate (which "auto" builds and times
    too on a CPU where OpenVINO is installed: a second compile, and a check it can fail), i.e. the CPU kernels and
    inductor where they run, else inductor."""
    from ackd_fast.ops.inference import KERNEL_DTYPES, kernels_available

    usable = device.type == "cpu" and dtype in KERNEL_DTYPES and kernels_available() is None
    return "kernels+inductor" if usable else "inductor"


def save_image(path: Path, image: Image.Image) -> None:
    """`image` to `path` (its folders made) atomically, in the format its suffix names (SAVE_OPTIONS)."""
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, lambda f: image.save(f, format=fmt, **SAVE_OPTIONS.get(fmt, {})))


def _to_image(x: Tensor) -> Image.Image:
    """A generated (3, H, W) image in [-1, 1] as an RGB PIL image, quantised as the metrics quantise it."""
    return Image.fromarray(metrics.quantize(x[None])[0].permute(1, 2, 0).cpu().numpy())


# ----------------------------------------------------------------------------------------- the command


def translate(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike], output: str | os.PathLike, *,
              size: int = 0, batch_size: int = 8, device: str = "cpu", amp: str = "none", fast: bool = False,
              direction: str = "auto", aligned: bool = False, index: bool = False, strict: bool = False,
              overwrite: bool = False, progress: bool = True) -> dict:  # fmt: skip
    """Translates every image of `inputs` (files and folders) with the generator in `checkpoint` into `output`
    (the module docstring). size: 0 = each image at its own size, else resized to size x size first; amp: "none"
    or "bf16" (autocast); fast: through `ackd_fast.deploy` (compiled once per image size); index: write
    `output`/index.html. Returns {"images", "skipped", "output", "seconds", "method", ...the generator}. Bad flag
    values raise UsageError, a bad file ValueError/FileNotFoundError, each naming it; nothing is written before
    every check has passed."""
    if not inputs:
        raise UsageError("give at least one --input (an image file or folder)")
    for name, value, low in (("--batch-size", batch_size, 1), ("--size", size, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{name} must be an integer >= {low}; got {value!r}")
    if size > data_lib.MAX_SIZE:
        raise UsageError(f"--size must be at most {data_lib.MAX_SIZE}; got {size}")
    if amp not in AMP_CHOICES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_CHOICES)}; got {amp!r}")
    if direction not in DIRECTION_CHOICES:
        raise UsageError(f"--direction must be one of {', '.join(DIRECTION_CHOICES)}; got {direction!r}")
    check_device(device)
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    output, given = Path(output), [Path(p) for p in inputs]
    check_output(output, given)
    generator, direction, about = pick_generator(checkpoint, direction)
    good, bad = check_images(gather_inputs(given), aligned, strict)
    jobs = plan_jobs(good, output, aligned, index, overwrite)
    for job in jobs:  # the size each is translated at (the file's header only; check_images decoded every one)
        with Image.open(job.source) as im:
            w, h = im.size
        job.size = (size, size) if size else ((w // 2, h) if aligned else (w, h))
    check_writable(output, "the output folder (--output)")

    multiple = size_multiple(generator)
    generator = generator.to(dev).eval().requires_grad_(False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float32
    deployed: dict[tuple, object] = {}

    def forward(x: Tensor) -> Tensor:
        if fast:
            key = tuple(x.shape)
            if key not in deployed:
                from ackd_fast.deploy import deploy

                deployed[key] = deploy(generator, x.to(dtype), method=fast_method(x.device, dtype))
            return deployed[key](x.to(dtype)).float()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            return generator(x).float()

    groups: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.size, []).append(job)
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="translating", unit="image", disable=not (progress and sys.stderr.isatty()))
    start = time.perf_counter()
    rows: dict[str, dict] = {}  # by job name: the index page lists them in input order
    try:
        for (w, h), members in groups.items():
            for first in range(0, len(members), batch_size):
                batch = members[first : first + batch_size]
                pictures = [read_pair(job.source, aligned, direction) for job in batch]
                if size:
                    pictures = [(a.resize((w, h), Image.BICUBIC), b) for a, b in pictures]
                x = torch.stack([data_lib.to_tensor(a) for a, _ in pictures])
                if fast and len(batch) < batch_size and len(members) > batch_size:
                    # the compiled path is built for one batch shape: the last batch of a size is filled up
                    x = torch.cat([x, x[-1:].expand(batch_size - len(batch), -1, -1, -1)])
                with torch.no_grad():
                    y = forward(padded(x, multiple).to(dev))[: len(batch), :, :h, :w]
                for job, (a, b), out in zip(batch, pictures, y, strict=True):
                    save_image(job.output, _to_image(out))
                    row = {"name": job.name, "input": job.input_picture or job.source, "output": job.output}
                    if job.input_picture is not None:
                        save_image(job.input_picture, a)
                        save_image(job.target_picture, b)
                        row["target"] = job.target_picture
                    rows[job.name] = row
                bar.update(len(batch))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    method = "eager" + (" (bf16 autocast)" if amp == "bf16" else "")
    if deployed:
        method = next(iter(deployed.values())).method
    setup = sum(d.setup_seconds for d in deployed.values())  # compiling, inside `seconds`
    result = about | {"images": len(jobs), "skipped": [str(p) for p, _ in bad], "output": str(output),
                      "seconds": seconds, "setup_seconds": setup, "method": method,
                      "device": metrics.device_name(dev)}  # fmt: skip
    if index:
        columns = ["input", "output", *(["target"] if aligned else [])]
        notes = [f"{about['checkpoint']} ({about['label']}, {about['source']}), "
                 f"{direction}; {len(jobs)} images" + (f" resized to {size}x{size}" if size else "")]  # fmt: skip
        ordered = [rows[job.name] for job in jobs]
        result["index"] = str(write_index(output, "ackd-fast translate", ordered, columns, notes))
    return result


__all__ = ["check_output", "gather_inputs", "padded", "pick_generator", "plan_jobs", "save_image", "translate"]
