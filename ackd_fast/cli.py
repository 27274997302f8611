"""The `ackd-fast` command: train-teacher, distill, evaluate, translate, export, bench-deploy, demo, study. It only
parses flags and calls into the package.

Multi-GPU / multi-node: start any training command under torchrun, e.g.
    torchrun --nproc_per_node 8 -m ackd_fast.cli distill --teacher runs/teacher/ckpt.pt ...
"""

from __future__ import annotations

import argparse
import json

from ackd_fast import __version__
from ackd_fast.assembly import COMMAND_DEFAULTS, Config
from ackd_fast.config_file import add_config_flags, apply_config, config_path_in, resolved_config
from ackd_fast.errors import RunInterrupted, UsageError
from ackd_fast.flags import add_flags, from_args
from ackd_fast.metrics import INCEPTION_SHA256


def _config(args: argparse.Namespace, job: str) -> Config:
    return from_args(Config, args, job=job)


def cmd_train_teacher(args: argparse.Namespace) -> None:
    from ackd_fast.train import train

    print(json.dumps(train(_config(args, "teacher")), indent=1))


def cmd_distill(args: argparse.Namespace) -> None:
    from ackd_fast.train import train

    print(json.dumps(train(_config(args, "distill")), indent=1))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ackd_fast.report import EvaluationSettings, evaluate_checkpoints

    def print_row(row: dict, index: int, count: int) -> None:
        # each row as soon as it is scored, so that a failure later (writing the report) loses no score; together
        # the lines are one JSON list of the rows
        line = json.dumps(row, default=float)
        print(("[\n" if index == 0 else "") + line + ("," if index < count - 1 else "\n]"), flush=True)

    evaluate_checkpoints(args.checkpoint, from_args(EvaluationSettings, args), on_row=print_row)


def cmd_export(args: argparse.Namespace) -> None:
    from ackd_fast.export import export

    result = export(args.checkpoint, args.format, args.out, size=args.size, dynamic=args.dynamic,
                    overwrite=args.overwrite, io=args.io)  # fmt: skip
    if "max_abs_diff" in result:
        print(f"onnxruntime vs PyTorch: max abs difference {result['max_abs_diff']:.3g}")
    print(json.dumps(result, indent=1))


def cmd_translate(args: argparse.Namespace) -> None:
    from ackd_fast.translate import translate

    result = translate(args.checkpoint, args.input, args.output, size=args.size, batch_size=args.batch_size,
                       device=args.device, amp=args.amp, fast=args.fast, direction=args.direction,
                       aligned=args.aligned, index=args.index, strict=args.strict, overwrite=args.overwrite,
                       progress=args.progress)  # fmt: skip
    print(json.dumps(result, indent=1))


def _any_model(spec: str, kwargs: str, ngf: int):
    """A generator named on the command line (`api.named_model`: a built-in name at --ngf, a file, or
    package.module:callable with --kwargs); a name that builds nothing is a bad flag value, a bad file is not."""
    from pathlib import Path

    from ackd_fast.api import named_model

    try:
        return named_model(spec, kwargs, ngf)
    except ValueError as e:
        if Path(spec).is_file():
            raise
        raise UsageError(str(e)) from None


def cmd_taps(args: argparse.Namespace) -> None:
    from ackd_fast.models import DEFAULT_TAPS
    from ackd_fast.models.module_taps import pairing_report, tap_report

    if args.size < 1 or args.depth < 1:
        raise UsageError(f"--size and --depth must be >= 1, got {args.size} and {args.depth}")
    if not args.model and not (args.teacher and args.student):
        raise UsageError("give MODEL, or --teacher and --student for the suggested pairing")
    if args.model:
        model, name = _any_model(args.model, args.kwargs, args.ngf)
        marked = [f"stages.{t}" for t in DEFAULT_TAPS.get(name, ())]
        print(tap_report(model, args.size, args.depth, marked))
        if marked:
            print(f"* the default taps ({','.join(DEFAULT_TAPS[name])})")
    if args.teacher and args.student:
        teacher, _ = _any_model(args.teacher, args.teacher_kwargs, args.ngf)
        student, _ = _any_model(args.student, args.student_kwargs, args.ngf)
        print(pairing_report(teacher, student, args.size))


def cmd_fid_stats(args: argparse.Namespace) -> None:
    from ackd_fast import data, evaluation, metrics

    metrics.check_sha256(args.inception_sha256)
    files = data.list_images(args.folder)
    inception = metrics.load_inception(
        args.inception_weights or None, args.device, args.download, args.inception_sha256
    )
    stats = evaluation.image_stats(evaluation.ImageFiles(files, args.size or None), inception, args.batch_size)
    protocol = {"folder": str(args.folder), "images": stats["n"], "size": args.size or "as stored",
                "resize": "bilinear to 299 inside pytorch-fid's InceptionV3"}  # fmt: skip
    metrics.save_stats(args.out, stats, protocol)
    print(f"wrote {args.out}: mu, sigma and features of {stats['n']} images")


def cmd_demo(args: argparse.Namespace) -> None:
    from ackd_fast.demo import DemoConfig, run_demo

    run_demo(from_args(DemoConfig, args))


def cmd_study(args: argparse.Namespace, argv: list[str]) -> None:
    from ackd_fast.study import StudyConfig, run_study

    sc = from_args(StudyConfig, args)
    result = run_study(sc, argv)
    print(f"\n{result['verdict']}\nreport: {sc.out_dir}/results.md, results.json, study.png")


def cmd_bench_deploy(args: argparse.Namespace) -> None:
    from ackd_fast.bench import PATHS, bench_deploy, parse_batches
    from ackd_fast.models import GENERATORS, build_generator
    from ackd_fast.models.by_path import is_import_path
    from ackd_fast.peers import load_generator

    generators = {}
    for spec in args.arch:
        name, _, ngf = spec.partition(":")
        if name in GENERATORS and ngf.isdigit():
            generators[spec] = build_generator(name, int(ngf))
        elif is_import_path(spec):  # a generator of one's own, with its default arguments
            generators[spec] = _any_model(spec, "", 0)[0]
        else:
            raise UsageError(f"--arch takes NAME:NGF (e.g. mobile_resnet_9blocks:16) or package.module:callable, got "
                             f"{spec!r}")  # fmt: skip
    for ckpt in args.checkpoints:
        generators[ckpt] = load_generator(ckpt)
    if not generators:
        raise UsageError("give checkpoints or --arch NAME:NGF")
    bench_deploy(
        generators, args.out, device=args.device, size=args.size, batches=parse_batches(args.batch),
        dtypes=tuple(args.dtypes.split(",")) if args.dtypes else None,
        paths=tuple(args.paths.split(",")) if args.paths else PATHS, rounds=args.rounds,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ackd-fast", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help=f"errors show their traceback (or {DEBUG_ENV}=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train-teacher", help="train a pix2pix or CycleGAN teacher")
    add_flags(p, Config, "teacher", COMMAND_DEFAULTS["teacher"])
    p.set_defaults(func=cmd_train_teacher)

    p = commands.add_parser("distill", help="distill a teacher checkpoint into a student with ACKD (or the baseline)")
    add_flags(p, Config, "distill", COMMAND_DEFAULTS["distill"])
    p.add_argument("--no-ackd", dest="kd", action="store_const", const="none", help="alias of --kd none")
    p.set_defaults(func=cmd_distill)

    p = commands.add_parser(
        "evaluate", help="FID/KID, PSNR/SSIM, params, MACs and latency of checkpoints; writes results.md/.json"
    )
    p.add_argument(
        "--checkpoint",
        nargs="+",
        required=True,
        help="ckpt.pt of train-teacher or distill runs (a best.pt beside one is scored too), exported generators, or "
        "the peers' generator files (latest_net_G.pth ...)",
    )
    from ackd_fast.report import EvaluationSettings

    add_flags(p, EvaluationSettings)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser(
        "export", help="a generator as a state dict (+ JSON), in the peers' layout, as ONNX or as a torch.export file"
    )
    p.add_argument("checkpoint", help="ckpt.pt / best.pt of a run, an exported generator, or a peer's generator file")
    p.add_argument(
        "--format",
        required=True,
        help="pth (state dict + JSON sidecar, read back by ackd_fast.load_generator), peer (GAN Compression / OMGD "
        "keys), onnx (checked by onnxruntime: fails over 1e-4), pt2 (torch.export.save)",
    )
    p.add_argument("--out", required=True, help="output file (a pth's sidecar goes beside it, .json)")
    p.add_argument("--size", type=int, default=256, help="example input size for onnx / pt2 (default: %(default)s)")
    p.add_argument("--dynamic", action="store_true", help="onnx: dynamic H and W; pt2: dynamic H = W")
    p.add_argument("--io", default="float", help="onnx / pt2: float ((B, 3, H, W) in [-1, 1] in and out) or uint8 "
                   "((B, H, W, 3) RGB images in and out, scaling, layout and clamping inside) (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (never the input, nor a file "
                   "in a run's folder)")  # fmt: skip
    p.set_defaults(func=cmd_export)

    from ackd_fast.translate import AMP_CHOICES, DIRECTION_CHOICES

    p = commands.add_parser("translate", help="apply a generator to image files and folders; writes the results "
                            "(and, with --index, index.html)")  # fmt: skip
    p.add_argument("checkpoint", help="ckpt.pt / best.pt of a run, an exported generator, or a peer's generator file")
    p.add_argument("--input", nargs="+", required=True, help="image files and folders (searched recursively)")
    p.add_argument("--output", required=True, help="output folder: each result keeps its input's path relative to "
                   "the folder given, and its name")  # fmt: skip
    p.add_argument("--size", type=int, default=0, help="resize inputs to SIZE x SIZE first (bicubic); 0 = each at "
                   "its own size, padded to what the generator takes and cropped back (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="images of one size per forward (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--amp", default="none", choices=AMP_CHOICES, help="bf16: autocast (default: %(default)s)")
    p.add_argument("--fast", action="store_true", help="through ackd_fast.deploy (compiled once per image size, "
                   "about a minute on a 2-core CPU)")  # fmt: skip
    p.add_argument("--direction", default="auto", choices=DIRECTION_CHOICES, help="AtoB or BtoA: the half of an "
                   "--aligned pair that is the input, and a CycleGAN checkpoint's generator (needed); auto = the "
                   "checkpoint's own (default: %(default)s)")  # fmt: skip
    p.add_argument("--aligned", action="store_true", help="inputs are A|B pairs side by side (pix2pix's layout): "
                   "--direction's input half is translated, the other half is the index page's target")
    p.add_argument("--index", action="store_true", help="write OUTPUT/index.html: input, output (and target) side "
                   "by side per image")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="refuse every input when one cannot be read (default: "
                   "named in a warning and skipped)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist (default: refused, "
                   "they are kept)")  # fmt: skip
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="a progress bar on a terminal (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_translate)

    p = commands.add_parser("taps", help="a generator's modules with their output shapes, strides and MACs (the "
                            "names --taps takes); with --teacher and --student, the suggested tap pairs")  # fmt: skip
    p.add_argument("model", nargs="?", default="", help="a built-in generator (at --ngf), a checkpoint or exported "
                   "generator, or package.module:callable")  # fmt: skip
    p.add_argument("--kwargs", default="", help="MODEL's keyword arguments as JSON (package.module:callable)")
    p.add_argument("--ngf", type=int, default=64, help="the width of a built-in generator (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="the input's side (default: %(default)s)")
    p.add_argument("--depth", type=int, default=3, help="module path levels shown (default: %(default)s)")
    p.add_argument("--teacher", default="", help="with --student: print the tap pairs auto-pairing suggests")
    p.add_argument("--student", default="", help="as MODEL")
    p.add_argument("--teacher-kwargs", default="", help="as --kwargs, for --teacher")
    p.add_argument("--student-kwargs", default="", help="as --kwargs, for --student")
    p.set_defaults(func=cmd_taps)

    p = commands.add_parser("fid-stats", help="FID reference statistics (.npz: mu, sigma, features) of an image folder")
    p.add_argument("folder", help="folder of real images")
    p.add_argument("out", help="output .npz")
    p.add_argument("--size", type=int, default=0, help="resize images to SIZE x SIZE first (bicubic); 0 = as stored")
    p.add_argument("--inception-weights", default="", help="as for evaluate")
    p.add_argument("--inception-sha256", default=INCEPTION_SHA256, help="as for evaluate")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True, help="as for evaluate")
    p.add_argument("--batch-size", type=int, default=50, help="images per forward (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.set_defaults(func=cmd_fid_stats)

    p = commands.add_parser(
        "bench-deploy", help="eager, torch.compile, onnxruntime and ackd_fast.deploy of generators, timed in one run"
    )
    p.add_argument("checkpoints", nargs="*", help="ckpt.pt files whose generators to time")
    p.add_argument("--arch", nargs="*", default=[], help="NAME:NGF generators with random weights, e.g. "
                   "mobile_resnet_9blocks:16 resnet_9blocks:64, or package.module:callable (its default "
                   "arguments)")  # fmt: skip
    p.add_argument("--size", type=int, default=256, help="square input size (default: %(default)s)")
    p.add_argument("--batch", default="1,4", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--dtypes", default="", help="comma-separated among fp32, bf16, fp16; default: fp32 and the "
                   "half types the device computes natively")  # fmt: skip
    p.add_argument("--paths", default="", help="comma-separated among eager, compile, onnxruntime, openvino, deploy; "
                   "default: all of them")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=20,
                   help="timed calls per path, in turns of 5 after 2 untimed calls (default: %(default)s)")  # fmt: skip
    p.add_argument("--out", default=".", help="folder for bench_deploy.md and .json (default: %(default)s)")
    p.set_defaults(func=cmd_bench_deploy)

    from ackd_fast.demo import DemoConfig

    p = commands.add_parser(
        "demo", help="teacher, then ACKD, plain-KD and no-KD students over seeds on a built-in set; prints a table"
    )
    add_flags(p, DemoConfig)
    p.set_defaults(func=cmd_demo)

    from ackd_fast.study import StudyConfig

    p = commands.add_parser(
        "study", help="the method study: one teacher, then ACKD variants, plain KD and no KD over paired seeds; "
        "paired differences with 95 %% intervals (resumable)",
    )  # fmt: skip
    add_flags(p, StudyConfig)
    p.add_argument("--gpu", dest="preset", action="store_const", const="gpu", help="alias of --preset gpu")
    p.set_defaults(func=cmd_study)
    for p in commands.choices.values():
        add_config_flags(p)
    return parser


def command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    """The sub-parser of `command` (None: no such command)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices.get(command)


DEBUG_ENV = "ACKD_FAST_DEBUG"  # set to 1 (or pass --debug): errors show their traceback


def main(argv: list[str] | None = None) -> None:
    """Runs one command. A user's mistake ends in one line on stderr, `ackd-fast COMMAND: error: ...`, and exit code 2
    for a bad flag value (as argparse's own) or 1 for anything else that failed; a run stopped by a signal exits
    128 + its number after its checkpoint. --debug or ACKD_FAST_DEBUG=1 shows the traceback instead."""
    import os
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    sub = command_parser(parser, command)
    config = config_path_in(argv[argv.index(command) + 1 :]) if sub is not None else ""
    if config:  # its values become the flags' defaults: the command line overrides them
        try:
            apply_config(sub, config)
        except UsageError as e:
            print(f"ackd-fast {command}: error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
    args = parser.parse_args(argv)
    if args.print_config:
        print(resolved_config(sub, args), end="")
        return
    where = f"ackd-fast {args.command}"
    try:
        if args.func is cmd_study:
            args.func(args, argv[1:])
        else:
            args.func(args)
    except RunInterrupted as e:
        print(f"{where}: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{where}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        if debug:
            raise
        print(f"{where}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, UsageError) else 1) from None


def one_line(e: BaseException) -> str:
    """The error's message on one line; what it is when the message alone does not say (an unexpected type), with
    where to see more."""
    text = " ".join(str(e).split()) or type(e).__name__
    expected = (ValueError, TypeError, OSError, ImportError, FloatingPointError, RuntimeError)
    if isinstance(e, ImportError) and getattr(e, "name", None):
        text = f"{text} (a missing optional package: pip install {e.name}, or the extra of the feature)"
    if isinstance(e, expected):
        return text
    text = text if len(text) <= 600 else text[:600] + " ..."
    return f"{type(e).__name__}: {text} (--debug or {DEBUG_ENV}=1 shows the traceback)"


if __name__ == "__main__":
    main()
