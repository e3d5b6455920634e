"""What `streamsr bench` reports: the results (JSON via `to_json`), the ratios between parts,
the notes, and the printed tables of a run and of a sweep."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from streamsr.bench.machine import Machine
from streamsr.bench.timing import Timing

SCHEMA = "streamsr-bench-v1"


@dataclass
class Ratios:
    """Quotients of the reported fps (None when a part was not run)."""

    pipeline_over_model: float | None = None
    pipeline_over_naive: float | None = None
    io_over_ffmpeg: float | None = None


@dataclass
class BenchResult:
    """Everything `streamsr bench` prints, as one JSON-serialisable object."""

    date: str
    machine: Machine
    config: dict
    model: dict  # name, parameters, trained
    engine: dict  # device, precision, batch, channels_last, compile
    results: dict[str, Timing]  # model_only, pipeline, naive, io_pipeline, io_ffmpeg
    ratios: Ratios
    notes: list[str]
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


@dataclass
class SweepPoint:
    """Model-only throughput at one (resolution, batch), with the pipeline's at that resolution."""

    width: int
    height: int
    batch: int
    model_fps: float | None  # None: out of memory
    ms_per_frame: float | None
    ms_per_megapixel: float | None  # cost normalised by LR pixels: flat means linear growth
    pipeline_fps: float | None = None  # only for the engine's own batch at this resolution


@dataclass
class SweepResult:
    """`streamsr bench --sweep`: how the cost grows with resolution and batch."""

    date: str
    machine: Machine
    config: dict
    model: dict
    engine: dict
    points: list[SweepPoint]
    notes: list[str]
    schema: str = SCHEMA + "-sweep"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def ratios(results: dict[str, Timing]) -> Ratios:
    """The three ratios of a run, from the parts it measured."""
    return Ratios(
        pipeline_over_model=_ratio(results.get("pipeline"), results.get("model_only")),
        pipeline_over_naive=_ratio(results.get("pipeline"), results.get("naive")),
        io_over_ffmpeg=_ratio(results.get("io_pipeline"), results.get("io_ffmpeg")))


def _ratio(a: Timing | None, b: Timing | None) -> float | None:
    return a.fps / b.fps if a is not None and b is not None else None


def notes(model_info: dict, device: torch.device) -> list[str]:
    """What a reader of the numbers should know: random weights, and what carries over."""
    out = []
    if not model_info["trained"]:
        out.append(f"{model_info['name']}: no trained weights here, so seeded random weights "
                   "were timed; speed does not depend on the weights' values")
    out.append("absolute fps depend on the machine and its load; the ratios of one run carry over")
    if device.type == "cpu":
        out.append("CPU run: other processes sharing these cores change absolute fps")
    return out


# ---------------------------------------------------------------------------------------------
# Text

_ROWS = (("model_only", "model only"), ("pipeline", "pipeline"), ("naive", "naive loop"),
         ("io_pipeline", "I/O only: pipeline, x4 nearest"), ("io_ffmpeg", "I/O only: FFmpeg"))


def fmt_fps(fps: float) -> str:
    """fps as the tables print it: 3 significant digits, whole numbers from 100 up."""
    return f"{fps:.3g}" if fps < 100 else f"{fps:.0f}"


def machine_lines(m: Machine) -> list[str]:
    """The CPU line, the GPU line (when there is one) and the library versions."""
    load = f", load {m.load_average[0]:.1f}" if m.load_average else ""
    lines = [f"CPU: {m.cpu} ({m.cpus_available} of {m.cpu_cores} cores available, "
             f"{m.torch_threads} torch threads{load})"]
    if m.gpu:
        lines.append(f"GPU: {m.gpu} ({m.gpu_memory_gib} GiB), CUDA {m.cuda}, cuDNN {m.cudnn}")
    lines.append(f"torch {m.torch}, PyAV {m.pyav} (FFmpeg {m.ffmpeg})"
                 + (f", {m.ffmpeg_cli}" if m.ffmpeg_cli else "") + f", Python {m.python}")
    return lines


def format_result(r: BenchResult) -> str:
    """The bench table: fps per part, the three ratios, the machine and the settings."""
    c, e = r.config, r.engine
    w, h = c["resolution"]
    weights = "trained" if r.model["trained"] else "untrained"
    head = [f"streamsr bench, {r.date}",
            f"{r.model['name']} ({r.model['parameters']:,} params, {weights} weights), "
            f"{w}x{h} -> {4 * w}x{4 * h}, {c['frames']} frames, {e.get('backend', 'torch')} on "
            f"{e['device']} {e['precision']}, "
            f"batch {e['batch']}, channels_last {e['channels_last']}, compile {e['compile']}, "
            f"CUDA graphs {'on' if e.get('cuda_graphs') else 'off'}, "
            f"decoder asked {c.get('decoder', 'software')}, encoder {c['encode']['codec']} "
            f"(preset {c['encode'].get('preset', 'default')})",
            *machine_lines(r.machine), ""]
    table = ["| part | fps | frames | seconds |", "|---|---:|---:|---:|"]
    for key, label in _ROWS:
        t = r.results.get(key)
        if t is not None:
            extra = f" ({t.detail['method']})" if "method" in t.detail else ""
            table.append(f"| {label}{extra} | {fmt_fps(t.fps)} | {t.frames} | {t.seconds:.2f} |")
    rows = [("pipeline / model only", r.ratios.pipeline_over_model),
            ("pipeline / naive loop", r.ratios.pipeline_over_naive),
            ("I/O: pipeline / FFmpeg", r.ratios.io_over_ffmpeg)]
    rows = [(name, value) for name, value in rows if value is not None]
    if rows:
        table += ["", "| ratio | value |", "|---|---:|"]
        table += [f"| {name} | {value:.2f} |" for name, value in rows]
    fast = r.results["io_ffmpeg"].detail.get("default_conversion") if "io_ffmpeg" in r.results else None
    if fast and r.results.get("io_pipeline"):
        table += ["", f"FFmpeg with its default (fast, less faithful) YUV<->RGB conversions instead "
                      f"of the pipeline's: {fmt_fps(fast['fps'])} fps (pipeline / that: "
                      f"{r.results['io_pipeline'].fps / fast['fps']:.2f})"]
    return "\n".join(head + table + [""] + [f"note: {n}" for n in r.notes])


def format_sweep(s: SweepResult) -> str:
    """The sweep table: fps, ms/frame and ms per LR megapixel, cost relative to the first point."""
    head = [f"streamsr bench --sweep, {s.date}",
            f"{s.model['name']} ({s.model['parameters']:,} params), {s.engine.get('device')} "
            f"{s.engine.get('precision')}, {s.config['frames']} frames per point",
            *machine_lines(s.machine), ""]
    table = ["| input | batch | model fps | ms/frame | ms per LR Mpx | cost vs first | pipeline fps |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = next((p.ms_per_frame for p in s.points if p.ms_per_frame), None)

    def cell(value: float | None, fmt: str) -> str:
        return "OOM" if value is None else format(value, fmt)

    for p in s.points:
        pipe = fmt_fps(p.pipeline_fps) if p.pipeline_fps is not None else ""
        rel = f"{p.ms_per_frame / base:.2f}x" if p.ms_per_frame and base else ""
        fps = fmt_fps(p.model_fps) if p.model_fps is not None else "OOM"
        table.append(f"| {p.width}x{p.height} | {p.batch} | {fps} | {cell(p.ms_per_frame, '.1f')} | "
                     f"{cell(p.ms_per_megapixel, '.0f')} | {rel} | {pipe} |")
    return "\n".join(head + table + [""] + [f"note: {n}" for n in s.notes])
