"""Sums up the traffic counters of a counting run (run.sh --count writes one JSON per
case under DIR/<op>/): per launch, global bytes read and written (as the warps ask for
them, as 32-byte sectors, and distinct over the launch), coalescing (ideal sectors /
sectors touched), shared-memory bank conflicts (worst degree, wavefronts against the
conflict-free count), __syncthreads per block, mma.sync and cp.async instructions; for
window_attention, each pass's global bytes against the floor (q, k, v, o, dO read once,
dq, dk, dv written once, the iRPE table, bucket map and lse once).

These are emulation counts: a model of the kernels' memory traffic made on the CPU,
not GPU measurements (no cache, no timing; see docs/design.md).
    python count_report.py DIR [--ops OP ...] [--cases NAME ...] [--json OUT [--raw-cases NAME ...]] [--markdown]
"""
import argparse
import glob
import json
import os
import re
import sys

NOTE = ("emulation counts: a model of the kernels' memory traffic made on the CPU emulation "
        "(csrc/tests/cuda_emulation, run.sh --count), not GPU measurements")


def short_kernel(name):
    name = name.replace("c10::", "")
    return name or "?"


def derived(launch):
    gl, gs, ga = launch["global_load"], launch["global_store"], launch["global_atomic"]
    sl, ss = launch["shared_load"], launch["shared_store"]
    uniq = launch["global_unique"]

    def ratio(a, b):
        return a / b if b else None

    return {
        "kernel": short_kernel(launch["kernel"]),
        "grid": launch["grid"], "block": launch["block"], "blocks": launch["blocks"],
        "smem": launch["dynamic_smem"] + launch["static_smem"],
        "read_bytes": gl["bytes"] + ga["bytes"],
        "written_bytes": gs["bytes"] + ga["bytes"],
        "sector_bytes": 32 * (gl["sectors"] + gs["sectors"] + ga["sectors"]),
        "unique_bytes": uniq["read_bytes"] + uniq["written_bytes"],
        "unique_read_bytes": uniq["read_bytes"], "unique_written_bytes": uniq["written_bytes"],
        "load_requests": gl["requests"], "store_requests": gs["requests"],
        "load_coalescing": ratio(gl["sectors_ideal"], gl["sectors"]),
        "store_coalescing": ratio(gs["sectors_ideal"], gs["sectors"]),
        "coalescing": ratio(gl["sectors_ideal"] + gs["sectors_ideal"] + ga["sectors_ideal"],
                            gl["sectors"] + gs["sectors"] + ga["sectors"]),
        "shared_load_degree": sl["max_conflict_degree"], "shared_store_degree": ss["max_conflict_degree"],
        "shared_wavefront_ratio": ratio(sl["wavefronts"] + ss["wavefronts"],
                                        sl["wavefronts_ideal"] + ss["wavefronts_ideal"]),
        "shared_requests": sl["requests"] + ss["requests"],
        "barriers_per_block": launch["barriers_max_per_block"],
        "barriers": launch["barriers"],
        "mma": launch["mma"],
        "cp_async": launch.get("cp_async", 0),  # (counts written before cp.async: none)
        "mark": launch.get("mark") or {},
    }


def attention_floor(m):
    """The bytes each window_attention pass must move at least (m: a launch's mark)."""
    es, S, N, H, d, NB = m["element_size"], m["S"], m["N"], m["H"], m["d"], m["NB"]
    acc = 8 if m["dtype"] == "Double" else 4
    T = S * N * H * d * es  # one (S, N, H, d) tensor
    rows = S * H * N * acc  # lse (or D)
    mode = m["mode"]
    table = (H if m["per_head"] else 1) * NB * d * es if mode == "contextual" else H * NB * es if mode == "bias" else 0
    ids = N * N * 4 if mode != "none" else 0
    if m["pass"] == "forward":  # q, k, v, table, ids in; out, lse out
        return {"read": 3 * T + table + ids, "written": T + rows, "tensor": T}
    # q, k, v, out, dO, lse, table, ids in; dq, dk, dv, d(table) out
    return {"read": 5 * T + rows + table + ids, "written": 3 * T + table, "tensor": T}


def floors(cases):
    out = []
    for case in cases:
        if case["op"] != "window_attention":
            continue
        passes = {}
        for launch in case["launches"]:
            m = launch["mark"]
            if m.get("pass") not in ("forward", "backward"):
                continue
            key = (m["dtype"], m["pass"])
            if key in passes and passes[key]["mark"] != m:
                continue  # (a second check of the same dtype and pass: keep the first)
            p = passes.setdefault(key, {"mark": m, "launches": []})
            p["launches"].append(launch)
        for (dtype, pas), p in passes.items():
            fl = attention_floor(p["mark"])
            total = {k: sum(x[k] for x in p["launches"])
                     for k in ("read_bytes", "written_bytes", "sector_bytes", "unique_bytes")}
            floor = fl["read"] + fl["written"]
            out.append({
                "case": case["case"], "dtype": dtype, "pass": pas,
                "kernels": [x["kernel"] for x in p["launches"]],
                "shape": {k: p["mark"][k] for k in ("S", "N", "H", "d", "NB", "mode", "per_head", "strided")},
                "floor_read": fl["read"], "floor_written": fl["written"], "floor": floor,
                "tensor_bytes": fl["tensor"],
                **total,
                "requested_over_floor": (total["read_bytes"] + total["written_bytes"]) / floor,
                "sectors_over_floor": total["sector_bytes"] / floor,
                "unique_over_floor": total["unique_bytes"] / floor,
            })
    return out


def load(folder, ops):
    cases = []
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.json"))):
        op = os.path.basename(os.path.dirname(path))
        if ops and op not in ops:
            continue
        with open(path) as f:
            data = json.load(f)
        cases.append({"op": op, "case": data["case"], "arch": data["arch"], "sms": data["sms"],
                      "file": os.path.relpath(path, folder),
                      "launches": [derived(x) for x in data["launches"]], "raw": data["launches"]})
    return cases


def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def kib(n):
    return f"{n / 1024:.1f}"


def launch_rows(case):
    """(row, count): identical launches of a case (the checks repeat some) once."""
    rows = []
    for x in case["launches"]:
        key = {k: v for k, v in x.items() if k != "mark"}
        key["mark"] = x["mark"].get("dtype", "")
        for r in rows:
            if r[0] == key:
                r[1] += 1
                break
        else:
            rows.append([key, 1])
    return rows


HEADER = ("kernel", "grid", "block", "smem B", "read KiB", "written KiB", "sectors KiB",
          "distinct KiB", "coalesced ld/st", "bank conflicts ld/st", "wavefronts", "barriers/block",
          "mma", "cp.async")


def row_of(x, n):
    return (x["kernel"] + (f" (x{n})" if n > 1 else ""), "x".join(map(str, x["grid"])),
            "x".join(map(str, x["block"])), str(x["smem"]), kib(x["read_bytes"]), kib(x["written_bytes"]),
            kib(x["sector_bytes"]), kib(x["unique_bytes"]),
            f"{pct(x['load_coalescing'])}/{pct(x['store_coalescing'])}",
            f"{x['shared_load_degree']}/{x['shared_store_degree']}-way",
            "-" if x["shared_wavefront_ratio"] is None else f"{x['shared_wavefront_ratio']:.2f}x",
            str(x["barriers_per_block"]), str(x["mma"]), str(x["cp_async"]))


def table(rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*HEADER)] + [fmt.format(*r) for r in rows])


def floor_table(fl, markdown):
    head = ("case", "dtype", "pass", "floor KiB", "requested", "sectors", "distinct", "kernels")
    rows = [(f["case"], f["dtype"], f["pass"], kib(f["floor"]),
             f"{kib(f['read_bytes'] + f['written_bytes'])} ({f['requested_over_floor']:.2f}x)",
             f"{kib(f['sector_bytes'])} ({f['sectors_over_floor']:.2f}x)",
             f"{kib(f['unique_bytes'])} ({f['unique_over_floor']:.2f}x)",
             " + ".join(k.split("<")[0].replace("window_attention_", "") for k in f["kernels"])) for f in fl]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                         ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--ops", nargs="*", default=[])
    parser.add_argument("--json", help="write every case, its launches and the floors here")
    parser.add_argument("--raw-cases", nargs="*", help="with --json: the raw counters (buffers, sites) "
                        "only for the cases whose name holds one of these (default: every case)")
    parser.add_argument("--markdown", action="store_true", help="tables in Markdown")
    parser.add_argument("--cases", nargs="*", default=[], help="only cases whose name holds one of these")
    args = parser.parse_args()
    cases = load(args.folder, args.ops)
    if args.cases:
        cases = [c for c in cases if any(n in c["case"] for n in args.cases)]
    if not cases:
        print(f"count_report.py: no counts under {args.folder}", file=sys.stderr)
        return 1
    print(f"({NOTE})\n")
    for case in cases:
        if not case["launches"]:
            continue
        # the SMs the case's launches saw (a mark's, where a case sets its own), else the run's
        sms = next((x["mark"]["sms"] for x in case["launches"]
                    if isinstance(x.get("mark"), dict) and "sms" in x["mark"]), case["sms"])
        print(f"{case['op']}: {case['case']}  [emulated sm_{case['arch']}, {sms} SMs]")
        print(table([row_of(x, n) for x, n in launch_rows(case)], args.markdown))
        print()
    fl = floors(cases)
    if fl:
        print("window_attention: global bytes of each pass against its floor (each input read once, "
              "each output written once); requested = bytes the warps ask for, sectors = 32-byte "
              "sectors those requests touch, distinct = bytes touched at least once")
        print(floor_table(fl, args.markdown))
    if args.json:
        def keep_raw(c):
            return args.raw_cases is None or any(n in c["case"] for n in args.raw_cases)
        with open(args.json, "w") as f:
            json.dump({"model": NOTE,
                       "cases": [{k: v for k, v in c.items() if k != "raw"} | ({"counters": c["raw"]} if keep_raw(c) else {})
                                 for c in cases], "floors": fl}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
