"""Builds ackd_fast and its operator library ackd_fast._C.

Environment switches (read at build time):
  ACKD_FAST_CPU_ONLY=1   build the CPU kernels only, even where CUDA could be built
  FORCE_CUDA=1           build the CUDA kernels too, and fail if they cannot be built
  TORCH_CUDA_ARCH_LIST   CUDA targets; defaults to "8.0;9.0+PTX" (Ampere, Hopper, and PTX that newer GPUs
                         compile at load) when no GPU is visible
  MAX_JOBS               parallel compile jobs for ninja (defaults to the number of cores)
  ACKD_FAST_CPU_BASELINE=1  no AVX2/FMA for the CPU kernels (they are used when the building machine has them)
  CUDA_HOME              the CUDA toolkit; found from nvcc when unset
"""

import glob
import os
import platform
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _find_cuda_home() -> str | None:
    """The real toolkit folder. `nvcc` on PATH may be a wrapper script in /usr/local/bin, from which torch
    would guess /usr/local and fail to link, so accept a folder only if it holds the CUDA headers."""
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported, so settle it first.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
    _home = _find_cuda_home()
    if _home:
        os.environ["CUDA_HOME"] = _home

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> bool:
    if _flag("ACKD_FAST_CPU_ONLY"):
        return False
    can = torch.version.cuda is not None and CUDA_HOME is not None
    if _flag("FORCE_CUDA") and not can:
        sys.exit(
            f"FORCE_CUDA=1 but CUDA cannot be built: torch.version.cuda={torch.version.cuda}, "
            f"CUDA_HOME={CUDA_HOME} (set CUDA_HOME to the toolkit folder that holds bin/nvcc)"
        )
    return can


def _pip_cuda_includes() -> list[str]:
    """Headers of the pip-installed CUDA libraries (cusparse.h and friends live only there)."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return found


def _cpu_vector_flags() -> list[str]:
    """AVX2/FMA/F16C for the at::vec kernels when the building machine has them (the extension is built where it runs);
    without these flags at::vec falls back to plain loops. ACKD_FAST_CPU_BASELINE=1 builds for any x86-64."""
    if _flag("ACKD_FAST_CPU_BASELINE") or platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return []
    # -mf16c: torch's Half conversions use F16C intrinsics under CPU_CAPABILITY_AVX2 (every AVX2 CPU has it)
    return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"] if {"avx2", "fma", "f16c"} <= flags else []


def extensions():
    cpp = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cu = sorted(glob.glob("csrc/cuda/*.cu"))
    # The emulation ops (csrc/cpu/*_emulated.cpp) run the CUDA kernels' code on the CPU, for the tests: a build
    # without the CUDA kernels (the demo's, a CPU wheel) has nothing to emulate, and skips their compile.
    emulation = sorted(glob.glob("csrc/cpu/*_emulated.cpp"))
    # torch adds the C++ standard it needs (C++20 for torch 2.14)
    # -fopenmp: at::parallel_for is header code that runs serially without it; the extension then shares
    # torch's libgomp.so.1 (same soname), so there is one OpenMP runtime.
    # -g0: Python's own CFLAGS add -g; debug info for optimised template-heavy code roughly doubled the C++ files'
    # compile time (the build a newcomer waits for) and nobody steps through these kernels in a debugger
    cxx = ["-O3", "-g0", "-fopenmp", *_cpu_vector_flags()]
    link = ["-fopenmp"]
    if not _want_cuda():
        print("ackd_fast: building CPU kernels only", flush=True)
        cpu_only = [f for f in cpp if f not in emulation]
        return [CppExtension("ackd_fast._C", cpu_only, extra_compile_args={"cxx": cxx}, extra_link_args=link)]
    if not torch.cuda.is_available():
        # +PTX: a GPU newer than sm_90 JIT-compiles the PTX instead of failing with "no kernel image"
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    print(
        f"ackd_fast: building CPU and CUDA kernels for {os.environ.get('TORCH_CUDA_ARCH_LIST', 'the visible GPU')}"
        f" with {CUDA_HOME}",
        flush=True,
    )
    return [
        CUDAExtension(
            "ackd_fast._C",
            cpp + cu,
            include_dirs=_pip_cuda_includes(),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=link,
        )
    ]


setup(
    packages=["ackd_fast", "ackd_fast.models", "ackd_fast.ops", "ackd_fast.kernels"],
    package_dir={"ackd_fast": "ackd_fast", "ackd_fast.kernels": "kernels"},
    package_data={"ackd_fast.kernels": ["tuned/*.json"]},  # the measured tile winners the kernels read
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
