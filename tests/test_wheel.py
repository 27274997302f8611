"""The package as a user installs it (issue 20): a wheel built by `pip wheel` from a clean checkout, installed into a
fresh virtual environment, runs `ackd-fast --version`, `--help` and a tiny `train-teacher`; its metadata names every
package the code imports (the optional ones under their extras)."""

import ast
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import ackd_fast
from ackd_fast.errors import OPTIONAL

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "skimage": "scikit-image", "pytorch_fid": "pytorch-fid", "yaml": "pyyaml"}
STDLIB = set(sys.stdlib_module_names)


def _clean_checkout(dest: Path) -> Path:
    """The files git tracks (and the untracked ones it does not ignore), as a fresh clone has them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to build from")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _clean_checkout(tmp / "src")
    env = {**__import__("os").environ, "ACKD_FAST_CPU_ONLY": "1"}  # the CPU kernels: the install is what is tested
    env.pop("FORCE_CUDA", None)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w",
                           str(tmp / "dist"), str(src)], capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = (tmp / "dist").glob("ackd_fast-*.whl")
    return built


def _requires(wheel: Path) -> tuple[set[str], dict[str, set[str]]]:
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
    core, extras = set(), {}
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            name = re.split(r"[<>=!;\[ ]", spec, maxsplit=1)[0].lower()
            extra = re.search(r'extra == "([^"]+)"', spec)
            (extras.setdefault(extra.group(1), set()) if extra else core).add(name)
    return core, extras


def test_the_metadata_names_every_package_the_code_imports(wheel):
    core, extras = _requires(wheel)
    with zipfile.ZipFile(wheel) as z:
        sources = {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py")}
    imported = set()
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - STDLIB - {"ackd_fast", "triton", "__future__"}  # triton: with torch's CUDA builds
    for module in sorted(third_party):
        dist = DISTRIBUTIONS.get(module, module).lower()
        if module in OPTIONAL:
            package, extra = OPTIONAL[module]
            assert package in extras.get(extra, set()), f"{module}: not in the extra [{extra}]"
        else:
            assert dist in core, f"the code imports {module} ({dist}), which the metadata does not require"
    for top in ("pytorch_fid", "onnxruntime", "onnxscript", "openvino"):
        package, extra = OPTIONAL[top]
        assert package in extras[extra]
    assert ackd_fast.__version__ in wheel.name


def test_the_wheel_installs_into_a_fresh_environment_and_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The dependencies: this environment's packages (torch is 6 GB: not fetched again), behind the new one's own.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cli = venv / "bin" / "ackd-fast"
    run = lambda *args: subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, cwd=tmp_path)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"ackd-fast {ackd_fast.__version__}"
    assert run("--help").returncode == 0
    where = subprocess.run([str(python), "-c", "import ackd_fast; print(ackd_fast.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path).stdout  # fmt: skip
    assert str(venv) in where  # the wheel's package, not the checkout's
    out = run("train-teacher", "--out-dir", tmp_path / "run", "--load-size", 36, "--crop-size", 32, "--ngf", 4,
              "--ndf", 8, "--steps", 2, "--workers", 0, "--device", "cpu")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "ckpt.pt").is_file() and "train-teacher: pix2pix teacher" in out.stdout
    assert "CUDA_HOME" not in out.stderr
