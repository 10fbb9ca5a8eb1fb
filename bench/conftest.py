"""Collects every benchmark's record and writes them, tagged, as
$LOMAR_BENCH_OUT/<bench file>.csv and .json (default bench/results/latest)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

_RECORDS: dict[str, list[dict]] = {}


@pytest.fixture
def record(request):
    """record(**fields): one result row of this benchmark file."""
    name = Path(request.node.fspath).stem

    def add(**fields):
        _RECORDS.setdefault(name, []).append({**fields, **common.environment_tags()})

    return add


def pytest_sessionfinish(session, exitstatus):
    if not _RECORDS:
        return
    out = Path(os.environ.get("LOMAR_BENCH_OUT", "bench/results/latest"))
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in _RECORDS.items():
        (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with open(out / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    print(f"\nbenchmark records written to {out}/")
