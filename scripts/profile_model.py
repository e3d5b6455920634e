#!/usr/bin/env python3
"""Where the model spends its time: torch.profiler over a few forward passes.

Runs the engine's own model call (autocast, channels_last; eager, so every op shows) on one
device-resident batch of a chosen size, prints the top ops by self time and the time per op
family (convolutions, elementwise, pooling, copies/concatenation, ...), and writes both as
JSON plus a Chrome trace (open in chrome://tracing or https://ui.perfetto.dev) to --out.

    python scripts/profile_model.py --model lite --size 320x180 --precision fp32 --device cpu \\
        --threads 1 --iterations 3 --out profile_cpu
    python scripts/profile_model.py --model paper --size 480x270 --precision bf16 --device cuda \\
        --batch 8 --iterations 5 --out profile_gpu

Untrained configs run with seeded random weights (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from streamsr.bench import bench_model, parse_resolution
from streamsr.inference.engine import ALIGN, Engine, EngineConfig

# op family -> patterns for aten op names without the "aten::" prefix (first match wins)
FAMILIES = (
    ("convolution", r"^_?(mkldnn_|cudnn_|miopen_)?conv|^_slow_conv|^_nnpack|^thnn_conv"),
    ("pooling and reductions (CAB global average)", r"pool|^mean$|^sum$"),
    ("resampling (bilinear, pixel shuffle)", r"^_?upsample|^pixel_(un)?shuffle|^grid_sampler"),
    ("matmul", r"^(addmm|mm|bmm|matmul|linear)$"),
    ("activation", r"^_?(prelu|relu|leaky_relu|sigmoid|gelu|silu|hardswish)"),
    ("elementwise arithmetic", r"^(add|mul|sub|div|addcmul|addcdiv|clamp|clamp_min|clamp_max"
                                r"|round|neg|exp)_?$"),
    ("concatenation and copies", r"^(_?cat|copy_|clone|contiguous|_to_copy|to|split|split_with_sizes"
                                 r"|chunk|narrow|slice|pad|reflection_pad2d|constant_pad_nd|fill_|zero_)$"),
    ("allocation and views", r"^(empty|empty_like|empty_strided|view|_unsafe_view|reshape|as_strided"
                             r"|expand|permute|transpose|t|unsqueeze|squeeze|select|detach|alias"
                             r"|resize_|resolve_conj|resolve_neg|unbind|split_with_sizes)$"),
)


@dataclass
class OpRow:
    """One op, aggregated over all profiled passes."""

    name: str
    calls: int
    self_ms: float  # per pass: host time for CPU runs, device time for CUDA runs
    share: float  # of the total self time
    family: str


def family_of(name: str) -> str:
    """The op family of an aten op name (see FAMILIES)."""
    short = name.removeprefix("aten::").lower()
    for family, pattern in FAMILIES:
        if re.search(pattern, short):
            return family
    return "other"


def self_time_us(event, device: str) -> float:
    """Self time of an aggregated event in microseconds: device time on CUDA, else host time."""
    if device == "cuda":
        return float(getattr(event, "self_device_time_total", 0.0)
                     or getattr(event, "self_cuda_time_total", 0.0))
    return float(event.self_cpu_time_total)


def run(args: argparse.Namespace) -> dict:
    """Profile, print the tables and return the summary that goes to JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = parse_resolution(args.size)
    model, info = bench_model(args.model)
    engine = Engine(model, EngineConfig(device=args.device, precision=args.precision,
                                        batch=args.batch, cuda_graphs="off"))
    device = engine.device.type
    ph, pw = -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN
    x = torch.rand(args.batch, 3, ph, pw, generator=torch.Generator().manual_seed(0))
    x = x.to(engine.device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize(engine.device)

    with torch.inference_mode():
        for _ in range(args.warmup):  # cuDNN autotuning, allocator warm-up, lazy inits
            engine.model_call(x)
        sync()
        t0 = time.perf_counter()  # the same passes without the profiler's overhead
        for _ in range(args.iterations):
            engine.model_call(x)
        sync()
        wall = (time.perf_counter() - t0) / args.iterations
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities, record_shapes=args.shapes) as prof:
            for _ in range(args.iterations):
                engine.model_call(x)
            sync()

    averages = prof.key_averages(group_by_input_shape=args.shapes)
    events = [e for e in averages if e.key.startswith("aten::")]
    total_us = sum(self_time_us(e, device) for e in events) or 1.0
    rows = sorted((OpRow(name=e.key + (f" {e.input_shapes}" if args.shapes else ""),
                         calls=e.count // args.iterations,
                         self_ms=self_time_us(e, device) / 1000 / args.iterations,
                         share=self_time_us(e, device) / total_us, family=family_of(e.key))
                   for e in events), key=lambda r: r.self_ms, reverse=True)
    families: dict[str, list[float]] = {}
    for r in rows:
        fam = families.setdefault(r.family, [0.0, 0])
        fam[0] += r.self_ms
        fam[1] += r.calls
    family_rows = sorted(({"family": k, "self_ms": v[0], "share": v[0] / (total_us / 1000 / args.iterations),
                           "calls": int(v[1])} for k, v in families.items()),
                         key=lambda r: r["self_ms"], reverse=True)
    summary = {
        "model": info, "device": str(engine.device), "precision": str(engine.dtype).removeprefix("torch."),
        "input": [width, height], "padded": [pw, ph], "batch": args.batch,
        "threads": torch.get_num_threads(), "iterations": args.iterations, "warmup": args.warmup,
        "wall_ms_per_pass": wall * 1000, "ms_per_frame": wall * 1000 / args.batch,
        "self_ms_per_pass": total_us / 1000 / args.iterations,
        "time_kind": "device (CUDA kernels)" if device == "cuda" else "host (CPU)",
        "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(engine.device) if device == "cuda" else None,
        "families": family_rows, "top": [asdict(r) for r in rows[:args.top]],
    }
    print(format_tables(summary))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"profile_{info['name']}_{width}x{height}_{summary['precision']}_{device}"
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
        prof.export_chrome_trace(str(out / f"{stem}_trace.json"))
        print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '_trace.json')}", file=sys.stderr)
    return summary


def format_tables(s: dict) -> str:
    """Markdown tables: op families, then the top ops by self time (per forward pass)."""
    w, h = s["input"]
    head = [f"{s['model']['name']} at {w}x{h} (padded {s['padded'][0]}x{s['padded'][1]}), batch "
            f"{s['batch']}, {s['device']} {s['precision']}, {s['threads']} threads; "
            f"{s['wall_ms_per_pass']:.1f} ms per pass without the profiler ({s['ms_per_frame']:.1f} "
            f"ms per frame); self times are {s['time_kind']} per pass under the profiler, "
            f"{s['self_ms_per_pass']:.1f} ms in all", ""]
    fam = ["| op family | self ms | share | calls |", "|---|---:|---:|---:|"]
    fam += [f"| {r['family']} | {r['self_ms']:.1f} | {100 * r['share']:.1f} % | {r['calls']} |"
            for r in s["families"]]
    top = ["| op | calls | self ms | share | family |", "|---|---:|---:|---:|---|"]
    top += [f"| `{r['name']}` | {r['calls']} | {r['self_ms']:.1f} | {100 * r['share']:.1f} % | "
            f"{r['family']} |" for r in s["top"]]
    return "\n".join(head + fam + [""] + top)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lite", help="lite, paper, tiny or a weights file")
    p.add_argument("--size", default="320x180", help="input frame size WxH (LR)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--iterations", type=int, default=3, help="profiled forward passes")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--top", type=int, default=15, help="rows of the top-ops table")
    p.add_argument("--shapes", action="store_true", help="split ops by input shape")
    p.add_argument("--out", default=None, help="folder for the JSON summary and Chrome trace")
    args = p.parse_args(argv)
    if args.batch < 1 or args.iterations < 1 or args.warmup < 0:
        p.error("--batch and --iterations must be >= 1, --warmup >= 0")
    return args


if __name__ == "__main__":
    run(parse_args())
