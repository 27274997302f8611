"""SASS (the GPU's machine code) of compiled kernels, read with the cuobjdump that Triton ships: no GPU needed.

`aot.py` counts instructions in the ACK-A kernels' cubins; `tests/test_extension_sass.py` checks the CUDA
extension's kernels (ackd_fast._C) for what the issue of their rewrite named: no fp64 arithmetic and no 64-bit
integer division in the fp32/bf16 kernels, and 128-bit loads and stores where they vectorise.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess

# An instruction line of `cuobjdump -sass`: /*0a10*/  [@P0 | @!UP1]  OPCODE.MODIFIERS operands ;
_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)")
_FUNCTION = re.compile(r"Function : (\S+)")


def cuobjdump() -> str | None:
    """Path of Triton's cuobjdump, or None when Triton or its NVIDIA backend is missing."""
    try:
        import triton.backends.nvidia
    except ImportError:
        return None
    tool = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "cuobjdump")
    return tool if os.path.exists(tool) else None


def opcodes(sass: str) -> list[str]:
    """The opcodes (with modifiers: LDG.E.128) of every instruction in a SASS listing, in order."""
    return _INSTRUCTION.findall(sass)


def count(ops: list[str], op: str) -> int:
    """How many of `ops` are `op` or `op` with more modifiers (FFMA counts FFMA.FTZ, not FFMA2)."""
    return sum(1 for o in ops if o == op or o.startswith(op + "."))


def dump(path: str, arch: int | None = None) -> str:
    """`cuobjdump -sass` of a cubin or of a shared library's embedded cubins (only those for sm_`arch` if given)."""
    tool = cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump: Triton's NVIDIA backend is not installed")
    command = [tool, "-sass", *(["-arch", f"sm_{arch}"] if arch else []), path]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def functions(sass: str) -> dict[str, collections.Counter]:
    """Opcode counts per kernel (by mangled name) of a SASS listing; a name seen in several cubins of one arch is
    counted once per cubin."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    name = None
    for line in sass.splitlines():
        found = _FUNCTION.search(line)
        if found:
            name = found.group(1)
            continue
        if name is not None:
            out[name].update(opcodes(line))
    return dict(out)
