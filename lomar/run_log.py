"""What a training run records: a JSONL log (one object per logged step), the same
scalars in TensorBoard, and a loss-curve PNG at the end. Only the main process
(rank 0) writes; the others get a RunLog that does nothing."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class RunLog:
    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.out_dir / "log.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    @property
    def jsonl_path(self) -> Path:
        return self.out_dir / "log.jsonl"

    def log(self, step: int, **scalars: float) -> None:
        """Record ``scalars`` (name=value) at ``step``."""
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, float(value), int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_log(path: str | Path) -> list[dict]:
    """The records of a log.jsonl (a torn last line, from a kill, is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_loss_curve(log_path: str | Path, png_path: str | Path, key: str = "loss",
                    title: str = "training loss") -> Path:
    """A PNG of ``key`` against step from a log.jsonl, with a moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["step"], r[key]) for r in read_log(log_path)
              if key in r and math.isfinite(r[key])]
    if not points:
        raise ValueError(f"plot_loss_curve: no finite '{key}' values in {log_path}")
    steps, values = zip(*points)
    window = max(1, len(values) // 20)
    smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
              for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=1, label=key)
    ax.plot(steps, smooth, color="tab:blue", linewidth=2, label=f"moving average ({window})")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    return finish_figure(fig, ax, png_path)


def plot_runs(runs: dict[str, str | Path], png_path: str | Path, key: str, x: str = "epoch",
              title: str = "", ylabel: str | None = None) -> Path:
    """One PNG with ``key`` against ``x`` for several runs: ``runs`` maps a label to
    a log.jsonl (or the run folder holding it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, path in runs.items():
        path = Path(path)
        path = path / "log.jsonl" if path.is_dir() else path
        points = [(r[x], r[key]) for r in read_log(path) if key in r and x in r]
        if not points:
            raise ValueError(f"plot_runs: no '{key}' values (with '{x}') in {path}")
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or key)
    ax.set_title(title)
    return finish_figure(fig, ax, png_path)


def finish_figure(fig, axes, png_path: str | Path) -> Path:
    """Grid and legend on each of ``axes`` (one or several), layout; writes the PNG
    (creating its folder) and closes the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    for ax in np.atleast_1d(axes).flat:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
