"""Writes lomar_ops/defaults.py: the default backend of each op on CUDA, per shape class,
chosen from a committed GPU record as the fastest measured backend.

    python bench/choose_defaults.py bench/results/gpu-2026-12-04-h200 [--check]

For each op the record's rows of the mode training runs it in are compared
(forward + backward; forward only for window_patchify, whose images are data), in
the record's dtype. Rows of code that changed since the record are left out (STALE,
each with its reason): their times no longer describe what would run. Shape classes
are split at the geometric mean of neighbouring measured sizes; the largest class has
no upper bound. --check exits 1 when the committed table differs from what the
record gives (CI runs it through tests/ops/test_backends.py)."""

from __future__ import annotations

import argparse
import json
import math
import pprint
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "lomar_ops" / "defaults.py"

# op -> (benchmark file, the mode training runs the op in, the size that sets its class)
OPS = {
    "window_attention": ("bench_window_attention", "fwd+bwd", "N"),
    "rpe_gather": ("bench_rpe_gather", "fwd+bwd", "N"),
    "mask_substitute": ("bench_mask_substitute", "fwd+bwd", "L"),
    "masked_patch_loss": ("bench_masked_patch_loss", "fwd+bwd", None),
    "window_patchify": ("bench_window_patchify", "fwd", None),
}
# Row names of the benchmark files -> backend names ("op:sdpa" -> "sdpa"); rows that
# are not backends of the op (the authors' eager formulation) are not candidates.
NOT_BACKENDS = {"eager"}
# (op, backend): why the record's rows of that backend no longer describe its code.
STALE = {
    ("window_attention", "torch"): "the reference's iRPE term now takes rpe_gather's "
                                   "deterministic backward (sort-based on CUDA)",
    ("window_attention", "flex"): "the flex backend gathers the iRPE term inside its "
                                  "score_mod; the record's FlexAttention read a "
                                  "materialised (S, H, N, N) term",
    ("rpe_gather", "torch"): "the reference's backward is now deterministic on CUDA "
                             "(sort-based index_put_ instead of scatter_add's atomics)",
    ("masked_patch_loss", "triton"): "its Triton kernels were restructured so that "
                                     "Triton 3.6 compiles them",
}
# Beyond the largest op-level shape: the ViTDet backbone's all-global blocks at 1024
# (N = 64 x 64 = 4096 tokens), a model-level figure (every op on one backend).
MODEL_LEVEL = {"window_attention": ("bench_vitdet", "1024-global", 4096)}


def _size(shape: str, key: str) -> int:
    match = re.search(rf"\b{key}=(\d+)", shape)
    if not match:
        raise ValueError(f"no {key}= in the benchmark shape {shape!r}")
    return int(match.group(1))


def _rows(record: Path, name: str) -> list[dict]:
    path = record / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the record has no {name} results")
    return [r for r in json.loads(path.read_text()) if "median_ms" in r]


def _backend(row: dict) -> str:
    return row["backend"][3:] if row["backend"].startswith("op:") else row["backend"]


def _classes(op: str, record: Path) -> list[dict]:
    bench, mode, size_key = OPS[op]
    cases: dict[str, dict] = {}
    for row in _rows(record, bench):
        backend = _backend(row)
        if row["mode"] != mode or backend in NOT_BACKENDS:
            continue
        case = cases.setdefault(row["case"], {
            "case": row["case"], "shape": row["shape"], "mode": mode, "dtype": row["dtype"],
            "size": _size(row["shape"], size_key) if size_key else None, "ms": {},
            "left_out": {}})
        if (op, backend) in STALE:
            case["left_out"][backend] = STALE[(op, backend)]
        else:
            case["ms"][backend] = row["median_ms"]
    if op in MODEL_LEVEL:
        bench, name, size = MODEL_LEVEL[op]
        rows = [r for r in _rows(record, bench) if r["case"] == name]
        cases[name] = {"case": f"{bench}:{name}", "shape": rows[0]["shape"], "mode": "fwd+bwd",
                       "dtype": rows[0]["dtype"], "size": size,
                       "ms": {r["backend"]: r["median_ms"] for r in rows
                              if (op, r["backend"]) not in STALE},
                       "left_out": {r["backend"]: STALE[(op, r["backend"])] for r in rows
                                    if (op, r["backend"]) in STALE}}
    ordered = sorted(cases.values(), key=lambda c: c["size"] or 0)
    for i, case in enumerate(ordered):
        case["ms"] = dict(sorted(case["ms"].items(), key=lambda kv: kv[1]))
        case["backend"] = next(iter(case["ms"]))
        nxt = ordered[i + 1]["size"] if i + 1 < len(ordered) else None
        case["up_to"] = (int(math.sqrt(case["size"] * nxt))
                         if nxt is not None and case["size"] is not None else None)
    # Neighbouring classes with the same winner are one class.
    merged: list[dict] = []
    for case in ordered:
        if merged and merged[-1]["backend"] == case["backend"]:
            merged[-1]["up_to"] = case["up_to"]
            merged[-1]["also_measured"] = merged[-1].get("also_measured", []) + [
                {k: case[k] for k in ("case", "shape", "ms")}]
        else:
            merged.append(case)
    return merged


def build(record: Path) -> str:
    ceilings = json.loads((record / "ceilings.json").read_text())
    first = _rows(record, OPS["window_attention"][0])[0]
    meta = {"record": record.name, "device": ceilings["device_name"], "torch": first["torch"],
            "triton": first["triton"], "date": first["date"][:10]}
    table = {op: [{"size_key": OPS[op][2], **c} for c in _classes(op, record)] for op in OPS}
    text = pprint.pformat(table, width=96, sort_dicts=False)
    return (f'"""Default backends on CUDA, from the GPU record {meta["record"]} '
            f'({meta["device"]}, torch\n{meta["torch"]}, Triton {meta["triton"]}): per op and '
            f'shape class, the backend that record\nmeasured fastest in the mode training runs '
            f'the op in. Written by bench/choose_defaults.py;\ndo not edit: run it on a new '
            f'record instead (lomar_ops.backends reads this table)."""\n\n'
            f"RECORD = {meta!r}\n\n"
            f"# op -> classes by size (size_key: the dimension that sets the class, None: one class;\n"
            f"# up_to: the largest size of the class, None: no bound); ms: the record's medians,\n"
            f"# fastest first; left_out: backends whose code changed since the record, and why.\n"
            f"CUDA = {text}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed lomar_ops/defaults.py instead of writing")
    args = parser.parse_args()
    text = build(args.record)
    if args.check:
        if TARGET.read_text() != text:
            print(f"{TARGET} differs from what {args.record} gives: run "
                  f"python bench/choose_defaults.py {args.record}", file=sys.stderr)
            return 1
        print(f"{TARGET.name} follows {args.record}")
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
