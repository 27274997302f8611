"""The errors a user can cause, which the `ackd-fast` command answers in one line (`cli.main`).

Everything else the package raises for a bad argument is a ValueError or TypeError naming it; `UsageError` marks
the ones that are a bad flag value (the command exits 2, as argparse does), `RunInterrupted` a run stopped by a
signal after writing its checkpoint (exit 128 + the signal's number, the shell's convention).
"""

from __future__ import annotations

import importlib
import signal


class UsageError(ValueError):
    """A flag or argument value the command cannot take: exit code 2."""


class RunInterrupted(Exception):
    """A training run stopped by SIGINT, SIGTERM or SIGHUP after finishing its step and writing its checkpoint."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


# Optional packages: module -> (pip name, the extra of ackd_fast that installs it)
OPTIONAL = {
    "pytorch_fid": ("pytorch-fid", "fid"),
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "openvino"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}


def optional_import(module: str, feature: str, instead: str = ""):
    """`module` imported, or ImportError saying which feature needs which package, how to install it (the extra),
    and `instead`, what to do without it (e.g. "--no-fid skips FID/KID")."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        package, extra = OPTIONAL.get(top, (top, ""))
        how = f"pip install 'ackd_fast[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        raise ImportError(f"{feature} needs the package {package}: {how}" + (f"; {instead}" if instead else ""),
                          name=top) from None  # fmt: skip


__all__ = ["RunInterrupted", "UsageError", "optional_import"]
