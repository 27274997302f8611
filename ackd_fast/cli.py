"""The `ackd-fast` command: train-teacher, distill, evaluate, demo. It only parses flags and calls into the package.

Multi-GPU / multi-node: start any training command under torchrun, e.g.
    torchrun --nproc_per_node 8 -m ackd_fast.cli distill --teacher runs/teacher/ckpt.pt ...
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields

from ackd_fast.train import Config

# One line per flag; the flag is the Config field with "-" for "_".
HELP = {
    "model": "teacher objective: pix2pix (hinge GAN + L1 x100, paired) or cyclegan (LSGAN + cycle x10 + identity x0.5)",
    "out_dir": "run folder: ckpt.pt, log.jsonl, samples/",
    "dataroot": "dataset folder (aligned: DIR/train/*.png with A|B side by side; unaligned: DIR/trainA, DIR/trainB), "
    "or 'sample' for the built-in edges->photo set (built under OUT_DIR/data)",
    "dataset_mode": "aligned, unaligned, or auto (aligned when the objective is paired)",
    "direction": "AtoB or BtoA: which half (aligned) or folder (unaligned) is the input",
    "load_size": "training images are resized to this square size before cropping",
    "crop_size": "random square crop for training; evaluation resizes to this size",
    "flip": "random horizontal flips in training",
    "batch_size": "images per process and step; 0 = 4 when paired, 1 when unpaired",
    "workers": "data-loading worker processes per training process",
    "generator": "teacher generator: resnet_9blocks, mobile_resnet_9blocks or unet_256",
    "ngf": "teacher generator width (channels of its first conv)",
    "discriminator": "n_layers (PatchGAN) or multi_scale (PatchGANs at 1x, 1/2x)",
    "ndf": "discriminator width",
    "n_layers_d": "PatchGAN layers (3: the 70x70 PatchGAN)",
    "teacher": "checkpoint of a train-teacher run (its generator is distilled; its discriminator starts the student's)",
    "recipe": "compress: student mobile_resnet_9blocks at --student-ngf; self: the teacher's own architecture",
    "student_ngf": "student width for --recipe compress (16: 0.137 M params, 1.41 GMACs at 256x256)",
    "taps": "comma-separated teacher taps, shallow to deep (default stem,block3,block6,block9); the first is only "
    "a source",
    "student_taps": "comma-separated student taps matching --taps (default: the student's stem,block3,block6,block9)",
    "ackd": "ACKD feature distillation; --no-ackd trains the baseline student (reconstruction + GAN only), the alias "
    "of --kd none",
    "kd": "feature distillation: ackd (refiners over the teacher's taps), plain (GAN Compression's: the student's "
    "taps through 1x1 connectors pulled by MSE to the teacher's own taps, no refiners) or none (the baseline)",
    "mode": "ACK refiner: attention (ACK-A), fusion (ACK-F) or both (ACK-F after ACK-A)",
    "residual": "residual connections in ACK-A and ACK-F (--no-residual: the ablation)",
    "ack_train": "teacher-path: refiners learn by decoding through the frozen teacher, the student sees the refined "
    "features detached; joint: the feature loss also trains the refiners",
    "kv_stride": "ACK-A average-pools the sources by this stride before keys/values (fewer tokens, faster)",
    "heads": "ACK-A attention heads (must divide the teacher's tap channels)",
    "lambda_recon": "weight of the L1 to the ground truth (paired) or to the teacher's output (unpaired)",
    "lambda_gan": "weight of the student's GAN loss",
    "lambda_feat": "weight of the ACKD feature MSE",
    "steps": "training steps (the learning-rate schedule spans them)",
    "decay_steps": "the last DECAY_STEPS steps decay the learning rate linearly to 0; -1 = steps // 2",
    "lr": "Adam learning rate (generator and discriminator)",
    "beta1": "Adam beta1",
    "beta2": "Adam beta2",
    "device": "auto (CUDA when present), cpu or cuda",
    "amp": "mixed precision: auto (bf16 on CUDA, none on CPU), none, bf16, or fp16 (with a gradient scaler)",
    "compile": "torch.compile the generators and discriminators",
    "channels_last": "channels_last memory format for images and weights (CUDA only: slower on CPU)",
    "tf32": "TF32 matmuls and convolutions on CUDA",
    "seed": "random seed (weights, data order, augmentation)",
    "log_every": "steps between log.jsonl records and progress-bar updates",
    "sample_every": "steps between sample grids (input / output / target) in OUT_DIR/samples",
    "ckpt_every": "steps between checkpoints (OUT_DIR/ckpt.pt, written atomically)",
    "resume": "continue from OUT_DIR/ckpt.pt when it exists (weights, optimizers, schedules, RNG, data order)",
    "stop_at": "stop after this step with a checkpoint (the schedule still spans --steps); 0 = run to the end",
    "progress": "show a progress bar",
    "eval_every": "steps between evaluations logged to log.jsonl (PSNR/SSIM; FID/KID when the Inception weights are "
    "there); 0 = none",
    "select_on": "none, or val: hold out --val-size training samples, evaluate on them every --eval-every steps and "
    "keep the best generator in OUT_DIR/best.pt (the peers select on the test split)",
    "val_size": "samples held out for --select-on val; 0 = a tenth of the training samples, at least 1 and at most 200",
    "inception_weights": "pytorch-fid's pt_inception-2015-12-05 weights file for FID/KID; empty = the torch hub "
    "cache (training never downloads)",
}
TEACHER_ONLY = {"teacher", "recipe", "student_ngf", "taps", "student_taps", "ackd", "mode", "residual", "ack_train",
                "kd", "kv_stride", "heads", "lambda_recon", "lambda_gan", "lambda_feat"}  # fmt: skip
DISTILL_ONLY = {"model", "generator", "ngf", "discriminator", "ndf", "n_layers_d"}


def _add_config_flags(parser: argparse.ArgumentParser, skip: set[str], defaults: dict) -> None:
    for f in fields(Config):
        if f.name in skip or f.name == "job":
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=HELP[f.name])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(flag, type=kind, default=default, help=f"{HELP[f.name]} (default: %(default)s)")


def _config(args: argparse.Namespace, job: str) -> Config:
    names = {f.name for f in fields(Config)}
    return Config(job=job, **{k: v for k, v in vars(args).items() if k in names})


def cmd_train_teacher(args: argparse.Namespace) -> None:
    from ackd_fast.train import train

    print(json.dumps(train(_config(args, "teacher")), indent=1))


def cmd_distill(args: argparse.Namespace) -> None:
    from ackd_fast.train import train

    print(json.dumps(train(_config(args, "distill")), indent=1))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ackd_fast.evaluation import evaluate_checkpoints

    result = evaluate_checkpoints(
        args.checkpoint, dataroot=args.dataroot, phase=args.phase, dataset_mode=args.dataset_mode,
        direction=args.direction, crop_size=args.crop_size, batch_size=args.batch_size, device=args.device,
        fid=args.fid, inception_weights=args.inception_weights, fid_stats=args.fid_stats, download=args.download,
        kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, latency_runs=args.latency_runs,
        latency_batch=args.latency_batch,
        latency_size=args.latency_size, latency_dtypes=tuple(args.latency_dtypes.split(",")), task=args.task,
        out_dir=args.out_dir,
    )  # fmt: skip
    print(json.dumps(result["rows"], indent=1))


def cmd_fid_stats(args: argparse.Namespace) -> None:
    from ackd_fast import data, evaluation, metrics

    files = data.list_images(args.folder)
    inception = metrics.load_inception(args.inception_weights or None, args.device, download=args.download)
    stats = evaluation.image_stats(evaluation.ImageFiles(files, args.size or None), inception, args.batch_size)
    protocol = {"folder": str(args.folder), "images": stats["n"], "size": args.size or "as stored",
                "resize": "bilinear to 299 inside pytorch-fid's InceptionV3"}  # fmt: skip
    metrics.save_stats(args.out, stats, protocol)
    print(f"wrote {args.out}: mu, sigma and features of {stats['n']} images")


def cmd_demo(args: argparse.Namespace) -> None:
    from ackd_fast.demo import DemoConfig, run_demo

    run_demo(DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ackd-fast", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train-teacher", help="train a pix2pix or CycleGAN teacher")
    _add_config_flags(p, TEACHER_ONLY, {"out_dir": "runs/teacher"})
    p.set_defaults(func=cmd_train_teacher)

    p = commands.add_parser("distill", help="distill a teacher checkpoint into a student with ACKD (or the baseline)")
    _add_config_flags(p, DISTILL_ONLY, {"out_dir": "runs/distill"})
    p.set_defaults(func=cmd_distill)

    p = commands.add_parser(
        "evaluate", help="FID/KID, PSNR/SSIM, params, MACs and latency of checkpoints; writes results.md/.json"
    )
    p.add_argument(
        "--checkpoint",
        nargs="+",
        required=True,
        help="ckpt.pt of train-teacher or distill runs (a best.pt beside one is scored too)",
    )
    p.add_argument("--dataroot", default="", help="dataset folder (default: the first run's own)")
    p.add_argument("--phase", default="test", help="split folder to score (default: %(default)s)")
    p.add_argument("--dataset-mode", default="auto", help="aligned, unaligned, or auto (from the folder layout)")
    p.add_argument("--direction", default="AtoB", help="AtoB or BtoA (default: %(default)s)")
    p.add_argument("--crop-size", type=int, default=0, help="images are resized to this size; 0 = the run's crop size")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--fid", action=argparse.BooleanOptionalAction, default=True, help="FID and KID (--no-fid: skip)")
    p.add_argument(
        "--inception-weights",
        default="",
        help="pytorch-fid's pt_inception-2015-12-05 weights file; default: the torch hub cache",
    )
    p.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download the Inception weights into the torch hub cache when they are not there",
    )
    p.add_argument(
        "--fid-stats",
        default="",
        help="real statistics .npz (ours or GAN Compression's, keys mu, sigma); "
        "default: computed from the data (paired: the split's B images; unpaired: train+test B)",
    )
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: %(default)s)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default: %(default)s)")
    p.add_argument("--latency-runs", type=int, default=20, help="timed forwards per latency figure; 0 = no latency")
    p.add_argument("--latency-batch", type=int, default=8, help="throughput batch size (default: %(default)s)")
    p.add_argument(
        "--latency-size", type=int, default=0, help="square input size for latency; 0 = the evaluation size"
    )
    p.add_argument("--latency-dtypes", default="fp32,bf16", help="comma-separated (default: %(default)s)")
    p.add_argument(
        "--task",
        default="auto",
        help="published rows to show: auto (from the data folder's name), none, edges2shoes, horse2zebra or map2aerial",
    )
    p.add_argument("--out-dir", default="", help="report folder (default: the first checkpoint's folder)")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("fid-stats", help="FID reference statistics (.npz: mu, sigma, features) of an image folder")
    p.add_argument("folder", help="folder of real images")
    p.add_argument("out", help="output .npz")
    p.add_argument("--size", type=int, default=0, help="resize images to SIZE x SIZE first (bicubic); 0 = as stored")
    p.add_argument("--inception-weights", default="", help="as for evaluate")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True, help="as for evaluate")
    p.add_argument("--batch-size", type=int, default=50, help="images per forward (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.set_defaults(func=cmd_fid_stats)

    from ackd_fast.demo import DemoConfig

    p = commands.add_parser(
        "demo", help="teacher, then ACKD, plain-KD and no-KD students over seeds on a built-in set; prints a table"
    )
    d = DemoConfig()
    p.add_argument("--out-dir", default=d.out_dir, help="output folder (default: %(default)s)")
    p.add_argument(
        "--sample-set",
        default=d.sample_set,
        help="sketch (photo -> line drawing, region-split tiles) or edges (the earlier edges->photo set) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--tile-stride", type=int, default=d.tile_stride, help="px between training tiles (default: %(default)s)"
    )
    p.add_argument("--teacher-steps", type=int, default=d.teacher_steps, help="teacher steps (default: %(default)s)")
    p.add_argument(
        "--student-steps", type=int, default=d.student_steps, help="steps of each student (default: %(default)s)"
    )
    p.add_argument(
        "--seeds", type=int, default=d.seeds, help="runs of each student, seeds SEED.. (default: %(default)s)"
    )
    p.add_argument("--crop-size", type=int, default=d.crop_size, help="training crop size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate of every run (default: %(default)s)")
    p.add_argument("--teacher-ngf", type=int, default=d.teacher_ngf, help="teacher width (default: %(default)s)")
    p.add_argument("--student-ngf", type=int, default=d.student_ngf, help="student width (default: %(default)s)")
    p.add_argument("--ndf", type=int, default=d.ndf, help="discriminator width (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size (default: %(default)s)")
    p.add_argument("--kv-stride", type=int, default=d.kv_stride, help="ACK-A key/value pooling (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="data workers (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d.progress, help="progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
