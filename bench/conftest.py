"""Collects every benchmark's record and writes them, tagged, as
$LOMAR_BENCH_OUT/<bench file>.csv and .json (default bench/results/latest).

The files are rewritten after every record, so that a run cut short (the GPU
check gives the benchmarks a time limit) keeps every figure it measured."""

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


def _out() -> Path:
    return Path(os.environ.get("LOMAR_BENCH_OUT", "bench/results/latest"))


def _write(name: str) -> None:
    out = _out()
    out.mkdir(parents=True, exist_ok=True)
    rows = _RECORDS[name]
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(out / f"{name}.json")
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / f".{name}.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / f".{name}.csv.tmp").replace(out / f"{name}.csv")


@pytest.fixture
def record(request):
    """record(**fields): one result row of this benchmark file."""
    name = Path(request.node.fspath).stem

    def add(**fields):
        _RECORDS.setdefault(name, []).append({**fields, **common.environment_tags()})
        _write(name)

    return add


def pytest_sessionfinish(session, exitstatus):
    if _RECORDS:
        print(f"\nbenchmark records written to {_out()}/")
