"""ptxas's resource report (``nvcc --resource-usage`` or ``-Xptxas -v``) parsed into
one record per kernel entry and architecture.

The report is a sequence of blocks like (CUDA 13)::

    ptxas info    : Compiling entry function '_ZN9lomar_ops...fwd_kernel...' for 'sm_90'
    ptxas info    : Function properties for _ZN9lomar_ops...fwd_kernel...
        0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    ptxas info    : Used 96 registers, used 1 barriers, 1200 bytes smem, 712 bytes cmem[0]

"bytes smem" (static shared memory) and "cmem" are printed only when non-zero or for
some architectures (sm_90 omits cmem[0]); a missing item is 0. Non-entry device
functions get a "Function properties" block of their own, which is not mixed into
the entry's figures."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

_ENTRY = re.compile(r"Compiling entry function '(?P<mangled>[^']+)' for '(?P<arch>sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (?P<name>\S+)")
_FRAME = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
                    r"(?P<loads>\d+) bytes spill loads")
_USED = re.compile(r"Used (?P<registers>\d+) registers")
_BARRIERS = re.compile(r"used (?P<n>\d+) barriers")
_SMEM = re.compile(r"(?P<n>\d+) bytes smem")
_CMEM = re.compile(r"(?P<n>\d+) bytes cmem\[(?P<bank>\d+)\]")
_WARNING = re.compile(r"ptxas warning\s*:\s*(?P<text>.*)")

# Scalar types as the records name them.
_SHORT_TYPES = {"c10::BFloat16": "bf16", "c10::Half": "fp16", "float": "fp32", "double": "fp64"}


@dataclass
class KernelResources:
    """One kernel entry compiled for one architecture, as ptxas reports it."""
    arch: str
    mangled: str
    name: str = ""                 # demangled, without namespaces and parameter list
    registers: int = 0             # per thread
    barriers: int = 0
    static_smem: int = 0           # bytes per block (dynamic shared memory is the launch's)
    cmem: dict = field(default_factory=dict)  # constant bank -> bytes
    stack_frame: int = 0           # bytes per thread
    spill_stores: int = 0          # bytes per thread
    spill_loads: int = 0
    warnings: list = field(default_factory=list)

    @property
    def base(self) -> str:
        """The kernel's name without template arguments."""
        return self.name.split("<", 1)[0]

    def as_dict(self) -> dict:
        return {"arch": self.arch, "kernel": self.name, "registers": self.registers,
                "barriers": self.barriers, "static_smem": self.static_smem,
                "cmem": self.cmem, "stack_frame": self.stack_frame,
                "spill_stores": self.spill_stores, "spill_loads": self.spill_loads,
                "warnings": self.warnings, "mangled": self.mangled}


def parse(text: str, demangle=None) -> list[KernelResources]:
    """Every entry of a ptxas report, in report order. ``demangle`` maps mangled
    names to readable ones (default: :func:`demangle_names`, c++filt)."""
    entries: list[KernelResources] = []
    current: KernelResources | None = None
    properties_of = None  # the function whose "Function properties" block is open
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = KernelResources(arch=m["arch"], mangled=m["mangled"])
            entries.append(current)
            properties_of = None
        elif m := _PROPERTIES.search(line):
            properties_of = m["name"]
        elif m := _FRAME.search(line):
            if current is not None and properties_of == current.mangled:
                current.stack_frame = int(m["stack"])
                current.spill_stores = int(m["stores"])
                current.spill_loads = int(m["loads"])
            properties_of = None
        elif (m := _USED.search(line)) and current is not None:
            current.registers = int(m["registers"])
            if b := _BARRIERS.search(line):
                current.barriers = int(b["n"])
            if s := _SMEM.search(line):
                current.static_smem = int(s["n"])
            current.cmem = {int(c["bank"]): int(c["n"]) for c in _CMEM.finditer(line)}
        elif (m := _WARNING.search(line)) and current is not None:
            current.warnings.append(m["text"].strip())
    names = (demangle or demangle_names)([e.mangled for e in entries])
    for entry, name in zip(entries, names):
        entry.name = readable(name)
    return entries


def demangle_names(mangled: list[str]) -> list[str]:
    """c++filt over the names; the mangled names themselves when it is not installed."""
    tool = shutil.which("c++filt")
    if not tool or not mangled:
        return list(mangled)
    out = subprocess.run([tool], input="\n".join(mangled) + "\n", capture_output=True,
                         text=True, check=True).stdout.splitlines()
    if len(out) != len(mangled):
        raise RuntimeError(f"c++filt returned {len(out)} names for {len(mangled)}")
    return out


def readable(demangled: str) -> str:
    """'void lomar_ops::(anonymous namespace)::k<c10::BFloat16, 64, 64>(lomar_ops::...)'
    -> 'k<bf16, 64, 64>': the namespaces, return type and parameter list dropped, the
    scalar types shortened. A name c++filt could not demangle is kept as it is."""
    if demangled.startswith("_Z"):
        return demangled
    name = demangled.replace("(anonymous namespace)::", "")
    name = re.sub(r"^void\s+", "", name)
    depth = 0
    for i, ch in enumerate(name):  # the parameter list: the first "(" outside <...>
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0:
            name = name[:i]
            break
    base, sep, args = name.partition("<")
    base = base.rsplit("::", 1)[-1]
    if sep:
        parts = [a.strip() for a in _split_top_level(args[:-1])]
        args = ", ".join(_SHORT_TYPES.get(a, a) for a in parts)
        return f"{base}<{args}>"
    return base


def _split_top_level(args: str) -> list[str]:
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(args):
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(args[start:i])
            start = i + 1
    parts.append(args[start:])
    return parts
