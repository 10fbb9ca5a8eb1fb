"""The benchmark driver: every method at every resolution, one case at a time,
results written after each case (a run cut short keeps what it measured)."""

from __future__ import annotations

import datetime
import gc
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import lomar_ops

from ..engine import precision
from . import flops as flop_count
from .methods import (METHODS, PAPER_WINDOWS, PATCH, SIZES, WINDOW, check_resolution,
                      resolved_ops)
from .report import write_all
from .timing import PhaseTimer, make_optimizer, search_batch, time_fed_steps, time_steps

FULL_RESOLUTIONS = (224, 384, 448, 512, 768, 1024)
DEFAULT_CPU_BATCH = 2


@dataclass
class BenchConfig:
    device: str = "cpu"
    size: str = "base"
    resolutions: tuple[int, ...] = FULL_RESOLUTIONS
    methods: tuple[str, ...] = tuple(METHODS)
    batch: int | None = None  # None: search on CUDA, DEFAULT_CPU_BATCH on the CPU
    max_batch: int = 256
    warmup: int = 3
    iters: int = 10
    phase_iters: int = 2
    budget_s: float | None = None
    ceilings: str | None = None
    threads: int | None = None  # torch CPU threads; None: torch's default
    ops_backend: str | None = None  # every method's lomar_ops backend; None: each its own
    data_workers: int = 0  # > 0: LoMaR steps also fed by the window pipeline (data wait share)
    data_images: str | None = None  # JPEG folder for those steps; None: offline ImageNet-sized
    seed: int = 0
    amp: bool | str = True  # lomar.engine.precision: bf16 autocast on CUDA, fp32 on the CPU
    command: str = "lomar bench"
    out: str = "bench/results/throughput"

    def validate(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        if self.size not in SIZES:
            raise ValueError(f"--size must be one of {list(SIZES)}, got {self.size!r}")
        for name in self.methods:
            if name not in METHODS:
                raise ValueError(f"--methods: unknown method {name!r}; known: {list(METHODS)}")
        for res in self.resolutions:
            check_resolution(res)
        for name, value, low in (("--batch", self.batch, 1), ("--max-batch", self.max_batch, 1),
                                 ("--warmup", self.warmup, 0), ("--iters", self.iters, 1),
                                 ("--phase-iters", self.phase_iters, 0),
                                 ("--threads", self.threads, 1),
                                 ("--data-workers", self.data_workers, 0)):
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.ops_backend is not None:
            if self.ops_backend not in lomar_ops.BACKENDS:
                raise ValueError(f"--ops-backend must be one of {lomar_ops.BACKENDS}, "
                                 f"got {self.ops_backend!r}")
            try:
                resolved_ops(torch.device(self.device), self.ops_backend)
            except lomar_ops.BackendUnavailableError as exc:
                raise ValueError(f"--ops-backend {self.ops_backend}: {exc}") from None
        try:
            precision.autocast_dtype(self.amp, torch.device(self.device))
        except ValueError as exc:
            raise ValueError(f"--amp: {exc}") from None
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError(f"--budget-s must be positive, got {self.budget_s}")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, threads={torch.get_num_threads()}"


def _header(cfg: BenchConfig, device: torch.device) -> dict:
    name = _device_name(device)
    peak = flop_count.peak_tflops(name) if device.type == "cuda" else None
    return {"command": cfg.command, "device": name, "device_type": device.type,
            "size": cfg.size, "dtype": _dtype_label(cfg.amp, device),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "lomar_ops": lomar_ops.__version__,
                         "triton": lomar_ops.build_info().get("triton"),
                         "cuda": torch.version.cuda, "python": platform.python_version(),
                         "commit": _git_commit()},
            "peak_bf16_tflops": {"datasheet": peak,
                                 "measured_matmul": flop_count.measured_tflops(cfg.ceilings)},
            "config": {k: v for k, v in asdict(cfg).items() if k != "command"},
            "paper_windows": PAPER_WINDOWS, "cases": []}


def _dtype_label(amp, device: torch.device) -> str:
    dtype = precision.autocast_dtype(amp, device)
    return "fp32" if dtype is None else f"{str(dtype).replace('torch.', '')} autocast"


def _case(cfg, method, res, device, header) -> dict:
    torch.manual_seed(cfg.seed)
    size = SIZES[cfg.size]
    backend = cfg.ops_backend if cfg.ops_backend is not None else method.ops_backend
    case = {"method": method.name, "label": method.label, "resolution": res,
            "windows": method.windows(res) if method.windows else None,
            "ops_backends": resolved_ops(device, backend)}
    model = method.build(res, size).to(device).train()
    model.ops_backend = backend

    def make_inputs(batch):
        imgs = torch.randn(batch, 3, res, res, device=device)
        return imgs, method.step_kwargs(model, batch, res, device)

    if cfg.batch is not None:
        batch, case["batch_source"] = cfg.batch, "--batch"
    elif device.type == "cuda":
        batch = search_batch(model, make_inputs, device, start=8, max_batch=cfg.max_batch,
                             amp=cfg.amp)
        case["batch_source"] = f"largest 8 * 2**k <= {cfg.max_batch} that fits"
        if batch == 0:
            return {**case, "status": "out of memory at batch 1"}
    else:
        batch, case["batch_source"] = DEFAULT_CPU_BATCH, "CPU default"
    case["batch"] = batch
    try:
        imgs, kwargs = make_inputs(batch)
        optimizer = make_optimizer(model, device)
        case.update(time_steps(model, imgs, kwargs, optimizer, cfg.warmup, cfg.iters, cfg.amp))
        if cfg.phase_iters:
            case["phases_ms"] = PhaseTimer(model, cfg.amp).measure(imgs, kwargs, optimizer,
                                                          cfg.phase_iters)
        del imgs, kwargs, optimizer
        case["flops_per_image"] = flop_count.count_flops(model, *make_inputs(1))
    except torch.cuda.OutOfMemoryError:
        return {**case, "status": f"out of memory at batch {batch}"}
    if cfg.data_workers and method.name.startswith("lomar"):
        case.update(_fed(cfg, model, method, res, batch, device))
    train = case["flops_per_image"]["train"]
    case["achieved_tflops"] = train * case["images_per_s"] / 1e12
    peaks = header["peak_bf16_tflops"]
    case["mfu"] = flop_count.mfu(train, case["images_per_s"], peaks["datasheet"])
    case["mfu_vs_measured_matmul"] = flop_count.mfu(train, case["images_per_s"],
                                                    peaks["measured_matmul"])
    return {**case, "status": "ok"}


def _fed(cfg, model, method, res, batch, device) -> dict:
    """Steps of ``model`` fed by the window pipeline with ``cfg.data_workers`` loader
    processes: how much of the step waits for data (lomar/benchmark/timing.py)."""
    from ..data import ImageFiles, WindowCrops, WindowSpec
    from .data_pipeline import build_sources

    folder = Path(cfg.data_images) if cfg.data_images else Path(cfg.out) / "sources" / "imagenet"
    if not cfg.data_images and not any(folder.glob("*.jpg")):
        build_sources(folder.parent.parent, sets=("imagenet",), subfolders=True)
    n = method.windows(res)
    files = ImageFiles(folder, WindowCrops(WindowSpec(res, PATCH, WINDOW, n)))
    steps = cfg.warmup + cfg.iters
    sampler = torch.utils.data.RandomSampler(files, replacement=True, num_samples=batch * steps,
                                             generator=torch.Generator().manual_seed(cfg.seed))
    loader = torch.utils.data.DataLoader(files, batch_size=batch, sampler=sampler,
                                         num_workers=cfg.data_workers, drop_last=True,
                                         pin_memory=device.type == "cuda",
                                         prefetch_factor=4, persistent_workers=False)
    optimizer = make_optimizer(model, device)
    fed = time_fed_steps(model, loader, n, optimizer, device, cfg.warmup, cfg.iters,
                         cfg.amp)
    return {**fed, "data_workers": cfg.data_workers, "data_images": str(folder)}


def run(cfg: BenchConfig, log=print) -> dict:
    """Run every (method, resolution) case; write DIR/results.json, the plot and the
    ratio table after each case. Returns the results dict."""
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_cases(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _run_cases(cfg: BenchConfig, log) -> dict:
    device = torch.device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = _header(cfg, device)
    started = time.monotonic()
    for res in cfg.resolutions:
        for name in cfg.methods:
            method = METHODS[name]
            if not method.runs_at(res):
                continue
            if cfg.budget_s is not None and time.monotonic() - started > cfg.budget_s:
                case = {"method": name, "label": method.label, "resolution": res,
                        "status": f"skipped: --budget-s {cfg.budget_s:g} s spent"}
            else:
                t0 = time.monotonic()
                case = _case(cfg, method, res, device, header=results)
                case["case_wall_s"] = time.monotonic() - t0
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results["cases"].append(case)
            log(_line(case))
            write_all(results, out)  # a run cut short keeps what it measured
    return results


def _line(case: dict) -> str:
    head = f"{case['method']:<20} {case['resolution']:>5}"
    if case["status"] != "ok":
        return f"{head}  {case['status']}"
    mfu = f"  MFU {case['mfu']:.1%}" if case.get("mfu") else ""
    fed = (f"  fed by {case['data_workers']} workers: {case['fed_images_per_s']:.1f} img/s, "
           f"{case['data_wait_share']:.0%} waiting for data" if "data_wait_share" in case else "")
    return (f"{head}  batch {case['batch']:>4}  {case['images_per_s']:9.1f} img/s  "
            f"{case['ms_per_image']:8.2f} ms/img  "
            f"{case['flops_per_image']['train'] / 1e9:8.1f} GFLOP/img (train){mfu}{fed}")
