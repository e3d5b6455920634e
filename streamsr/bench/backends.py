"""`streamsr bench --backend A --backend B ...`: the backends side by side, in one run.

For each backend: its output on the clip's first frames against torch fp32 (PSNR and the
largest difference, uint8), model-only fps at one thread and at every available CPU (the best
count is kept: on a shared machine one thread can win), then the whole pipeline at that count;
the torch pipeline instead runs as `streamsr upscale` does, measuring one thread against all of
them in the run (`streamsr.inference.cpu_threads.CpuThreads`), unless --threads fixes the count.
A backend may name its precision, `NAME:PRECISION` (e.g. `openvino:int8`, `openvino:fp32`), so
one backend can appear at several precisions; without one it runs at the run's --precision.
The model-only rounds are interleaved (every backend once, then again), so a change in the
machine's load hits all rows alike; the best of the rounds is reported. The pipeline gets the
same treatment: ROUNDS runs per row, interleaved, the best kept (every run is in the JSON), and
on the CPU each of its rounds times the row's model alone again just before, so "pipeline /
model" compares two best-of figures taken at the same times, not one run against the best of
several. Compiled models are built (and cached) before anything is timed; the pipeline timing
still includes opening the cached model, as a real run does.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamsr.bench.clip import clip_frames, make_clip
from streamsr.bench.config import DEFAULT_FRAMES, BenchConfig
from streamsr.bench.encoding import encode_options
from streamsr.bench.machine import Machine, describe_machine, now
from streamsr.bench.model import bench_model, engine_config, release, time_model
from streamsr.bench.pipeline import run_pipeline
from streamsr.bench.report import SCHEMA, fmt_fps, machine_lines
from streamsr.bench.timing import Progress, announce
from streamsr.errors import ConfigError
from streamsr.inference.engine import Engine
from streamsr.runtime import available_cpus, cpu_threads_fixed, resolve_device

PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
ROUNDS = 2  # interleaved rounds (model only, then pipeline); the best fps of each row is kept

Engines = dict[tuple[str, int | None], Engine]  # (backend spec, threads) -> a planned engine


def split_spec(spec: str) -> tuple[str, str | None]:
    """`openvino:int8` -> ("openvino", "int8"); `torch` -> ("torch", None)."""
    name, _, precision = spec.partition(":")
    return name, precision or None


def spec_config(config: BenchConfig, spec: str, **changes) -> BenchConfig:
    """The bench config for one backend spec (its precision, when it names one)."""
    name, precision = split_spec(spec)
    return _with(config, backend=name, **({"precision": precision} if precision else {}),
                 **changes)


def _precision_name(engine: Engine) -> str:
    named = getattr(engine._forward, "precision", None)
    return named if isinstance(named, str) else PRECISION_NAMES[engine.dtype]


@dataclass
class BackendRow:
    """One backend's numbers; ratios are to this run's torch row (None without one)."""

    backend: str
    precision: str
    threads: int  # the best count, used for the pipeline
    batch: int
    model_fps: float
    model_fps_by_threads: dict[str, float]
    pipeline_fps: float | None = None  # the best of the rounds
    pipeline_fps_runs: list[float] = field(default_factory=list)  # every round, in order
    pipeline_threads: str | None = None  # "auto": the torch pipeline's own measurement
    pipeline_first_frame_s: float | None = None
    pipeline_over_model: float | None = None
    pipeline_over_torch_pipeline: float | None = None
    model_over_torch_model: float | None = None
    psnr_vs_torch_fp32: float | None = None  # dB, uint8 RGB output on the clip's frames
    # (None: identical)
    max_diff_vs_torch_fp32: int | None = None  # largest uint8 difference


@dataclass
class BackendsResult:
    date: str
    machine: Machine
    config: dict
    model: dict
    rows: list[BackendRow]
    notes: list[str] = field(default_factory=list)
    schema: str = SCHEMA + "-backends"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB of uint8 images; None when they are identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _with(config: BenchConfig, **changes) -> BenchConfig:
    return BenchConfig(**{**asdict(config), **changes})


def run_backends(config: BenchConfig, backends: Sequence[str],
                 progress: Progress | None = None) -> BackendsResult:
    """Model-only and pipeline fps of each backend, with its accuracy against torch fp32."""
    config.check()
    if len(set(backends)) != len(backends) or not backends:
        raise ConfigError(f"list each backend once, got {', '.join(backends) or 'none'}")
    device = resolve_device(config.device)
    width, height = config.resolution
    frames = config.frames or DEFAULT_FRAMES[device.type]
    model, model_info = bench_model(config.model, config.seed)
    counts = _thread_counts(config, device)
    engines = _prepare_engines(config, model, backends, counts, progress)
    accuracy = _accuracy(config, model, engines, backends, counts[0], progress)
    best = _model_rounds(engines, width, height, frames, progress)
    rows = []
    chosen: dict[str, Engine] = {}
    for name in backends:
        by_threads = {str(t): best[(name, t)] for t in counts}
        t = max(counts, key=lambda c: best[(name, c)])
        engine = chosen[name] = engines[(name, t)]
        rows.append(BackendRow(
            backend=name, precision=_precision_name(engine), threads=t or 0,
            batch=engine.batch, model_fps=best[(name, t)], model_fps_by_threads=by_threads,
            psnr_vs_torch_fp32=accuracy[name][0], max_diff_vs_torch_fp32=accuracy[name][1]))
    if device.type != "cpu":  # a GPU pipeline plans its batch from free memory: free it first
        chosen.clear()
    for key in [k for k in engines if chosen.get(k[0]) is not engines[k]]:
        release(engines.pop(key))
    if "pipeline" in config.parts:
        _pipeline_rows(config, model, rows, frames, chosen, progress)
    for engine in engines.values():
        release(engine)
    engines.clear()
    _ratios_to_torch(rows)
    cfg = asdict(config)
    cfg.update(frames=frames, resolution=[width, height], backends=list(backends),
               thread_counts=counts, rounds=ROUNDS)
    notes = [f"model only and pipeline: best of {ROUNDS} interleaved rounds each (CPU: the "
             "model timed again just before each pipeline run); pipeline: end to end, opening "
             "the cached model included, at the backend's best thread count (torch: measured "
             "in the run, as upscale does, unless --threads)",
             "PSNR / max difference: uint8 RGB output on the clip's first 2 frames against the "
             "torch fp32 engine"]
    if not model_info["trained"]:
        notes.append(f"{model_info['name']}: seeded random weights (no trained weights here)")
    return BackendsResult(date=now(), machine=describe_machine(device), config=cfg,
                          model=model_info, rows=rows, notes=notes)


def _thread_counts(config: BenchConfig, device: torch.device) -> list[int | None]:
    """The CPU thread counts to try: the user's, else 1 and every available CPU; on a GPU one
    setting (None: the engine's)."""
    if device.type != "cpu":
        return [None]
    if config.threads:
        return [config.threads]
    if cpu_threads_fixed():  # --threads or OMP_NUM_THREADS: the user's count only
        return [torch.get_num_threads()]
    return sorted({1, available_cpus()})


def _prepare_engines(config: BenchConfig, model: nn.Module, backends: Sequence[str],
                     counts: list[int | None], progress: Progress | None) -> Engines:
    """One planned engine per (backend, thread count), built (and compiled) before any timing."""
    engines: Engines = {}
    width, height = config.resolution
    for name in backends:
        for t in counts:
            announce(progress, f"preparing {name}" + (f", {t} thread(s)" if t else ""))
            engine = Engine(copy.deepcopy(model), engine_config(spec_config(config, name, threads=t)))
            engine.plan(height, width)
            engines[(name, t)] = engine
    return engines


def _accuracy(config: BenchConfig, model: nn.Module, engines: Engines, backends: Sequence[str],
              threads: int | None, progress: Progress | None) -> dict[str, tuple[float | None, int]]:
    """(PSNR or None when identical, largest difference) of each backend's output on the
    clip's first frames against the torch fp32 engine's."""
    width, height = config.resolution
    sample = np.stack(list(clip_frames(width, height, 2, config.seed)))
    ref_engine = Engine(copy.deepcopy(model), engine_config(
        _with(config, backend="torch", precision="fp32", threads=threads)))
    reference = ref_engine.upscale_batch(sample)
    del ref_engine
    accuracy: dict[str, tuple[float | None, int]] = {}
    for name in backends:
        out = engines[(name, threads)].upscale_batch(sample)
        diff = int(np.abs(out.astype(np.int32) - reference).max())
        accuracy[name] = (_psnr(out, reference), diff)
        psnr = accuracy[name][0]
        announce(progress, f"  {name}: " + ("identical to torch fp32" if psnr is None else
                                            f"PSNR {psnr:.1f} dB vs torch fp32, max "
                                            f"difference {diff}"))
    return accuracy


def _model_rounds(engines: Engines, width: int, height: int, frames: int,
                  progress: Progress | None) -> dict[tuple[str, int | None], float]:
    """Model-only fps of every engine, in interleaved rounds; the best of each is kept."""
    best: dict[tuple[str, int | None], float] = {}
    for round_ in range(ROUNDS):
        for key, engine in engines.items():
            announce(progress, f"model only, round {round_ + 1}: {key[0]}"
                               + (f", {key[1]} thread(s)" if key[1] else ""))
            timing = time_model(engine, width, height, max(engine.batch, frames // 4))
            best[key] = max(best.get(key, 0.0), timing.fps)
            announce(progress, f"  {timing.fps:.3g} fps")
    return best


def _pipeline_rows(config: BenchConfig, model: nn.Module, rows: list[BackendRow], frames: int,
                   engines: dict[str, Engine], progress: Progress | None) -> None:
    """Each row's pipeline fps on one clip, at its best thread count (torch: measured in the
    run, as upscale does, unless the user fixed the count): ROUNDS interleaved runs, the best
    kept. `engines` (CPU: each row's planned engine) times the model alone again just before
    each run, so both figures see the same moment's machine."""
    width, height = config.resolution
    with tempfile.TemporaryDirectory(prefix="streamsr-bench-", dir=config.workdir) as tmp:
        work = Path(tmp)
        clip = make_clip(work / "clip.mp4", width, height, frames, config.seed)
        enc = encode_options(config.codec, config.encoder_preset)
        for round_ in range(ROUNDS):
            for row in rows:
                engine = engines.get(row.backend)
                if engine is not None:
                    timing = time_model(engine, width, height, max(engine.batch, frames // 4))
                    row.model_fps = max(row.model_fps, timing.fps)
                    row.model_fps_by_threads[str(row.threads)] = row.model_fps
                threads = row.threads or None
                if split_spec(row.backend)[0] == "torch" and not (config.threads
                                                                  or cpu_threads_fixed()):
                    threads = None  # as upscale runs it: threads measured in the run
                row.pipeline_threads = "auto" if threads is None else str(threads)
                announce(progress, f"pipeline, round {round_ + 1}: {row.backend}, threads "
                                   f"{row.pipeline_threads}")
                cfg = spec_config(config, row.backend, threads=threads)
                timing = run_pipeline(clip, work / f"{row.backend.replace(':', '-')}.mp4",
                                      copy.deepcopy(model), engine_config(cfg, batch=row.batch),
                                      decoder=config.decoder, enc=enc)
                row.pipeline_fps_runs.append(timing.fps)
                if timing.fps >= (row.pipeline_fps or 0.0):
                    row.pipeline_fps = timing.fps
                    row.pipeline_first_frame_s = timing.detail.get("first_frame_s")
                announce(progress, f"  {timing.fps:.3g} fps")
    for row in rows:
        row.pipeline_over_model = row.pipeline_fps / row.model_fps


def _ratios_to_torch(rows: list[BackendRow]) -> None:
    torch_row = next((r for r in rows if split_spec(r.backend)[0] == "torch"), None)
    for row in rows:
        if torch_row is not None:
            row.model_over_torch_model = row.model_fps / torch_row.model_fps
            if row.pipeline_fps and torch_row.pipeline_fps:
                row.pipeline_over_torch_pipeline = row.pipeline_fps / torch_row.pipeline_fps


def format_backends(r: BackendsResult) -> str:
    """The side-by-side table."""
    w, h = r.config["resolution"]
    head = [f"streamsr bench --backend {' --backend '.join(r.config['backends'])}, {r.date}",
            f"{r.model['name']} ({r.model['parameters']:,} params), {w}x{h} -> {4 * w}x{4 * h}, "
            f"{r.config['frames']} frames, {r.config['device']}",
            *machine_lines(r.machine), ""]
    table = ["| backend | precision | model fps (by threads) | pipeline fps (threads) | "
             "pipeline / model | model / torch model | pipeline / torch pipeline | "
             "PSNR vs torch fp32 | max diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    for row in r.rows:
        psnr = ("identical" if row.psnr_vs_torch_fp32 is None
                else f"{row.psnr_vs_torch_fp32:.1f} dB")
        by = ", ".join(f"{fmt_fps(v)} @{t}" for t, v in row.model_fps_by_threads.items())
        pipe = (f"{fmt_fps(row.pipeline_fps)} ({row.pipeline_threads})" if row.pipeline_fps
                else "")
        table.append(f"| {row.backend} | {row.precision} | {fmt_fps(row.model_fps)} ({by}) | "
                     f"{pipe} | {num(row.pipeline_over_model, '.2f')} | "
                     f"{num(row.model_over_torch_model, '.2f')} | "
                     f"{num(row.pipeline_over_torch_pipeline, '.2f')} | "
                     f"{psnr} | {row.max_diff_vs_torch_fp32} |")
    return "\n".join(head + table + [""] + [f"note: {n}" for n in r.notes])
