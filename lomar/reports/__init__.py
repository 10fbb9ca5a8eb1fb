"""Reports that compare finished runs from their logs, each a PNG and a few printed lines,
the first run against the others: ``lomar report probe|detect|segment OUT.png LABEL=RUN_DIR ...``.

* ``probe``: linear-probe (or fine-tuning) runs, val top-1 per epoch (:mod:`.probe`);
* ``detect``: detection runs, box and mask AP per evaluation (:mod:`.detect`);
* ``segment``: segmentation runs, mIoU per evaluation and IoU per class (:mod:`.segment`)."""

from __future__ import annotations

from . import detect, probe, segment

REPORTS = {"probe": probe, "detect": detect, "segment": segment}


def report(kind: str, out_png: str, runs: dict[str, str]) -> list[str]:
    """The lines of report ``kind`` over ``runs`` ({label: run folder}), its figure
    written to ``out_png`` (named in the last line)."""
    if kind not in REPORTS:
        raise ValueError(f"report must be one of {list(REPORTS)}, got {kind!r}")
    if not runs:
        raise ValueError("give at least one run as LABEL=RUN_DIR")
    module = REPORTS[kind]
    results = {label: module.result(path) for label, path in runs.items()}
    png = module.figure(runs, out_png)
    lines = [module.describe(label, r) for label, r in results.items()]
    first, *others = results
    lines += [f"{first} - {other}: {module.compare(results[first], results[other])}"
              for other in others]
    return lines + [f"figure: {png}"]


def parse_runs(items: list[str]) -> dict[str, str]:
    """``LABEL=RUN_DIR`` arguments as {label: run folder}; a ValueError naming a bad one."""
    bad = [item for item in items if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise ValueError(f"runs are LABEL=RUN_DIR, got {bad[0]!r}")
    return dict(item.split("=", 1) for item in items)
