"""Learning curves: validation margin over bicubic (dB) against CPU-hours, one line per run.

    python scripts/plot_curves.py runs/curves/lite runs/curves/lean ... \
        --csv docs/training_curves.csv --png docs/training_curves.png
    python scripts/plot_curves.py --from-csv docs/training_curves.csv --png docs/training_curves.png

Reads each run folder's log.csv (`val/margin_db` at every validation, with the run's cumulative
CPU-seconds logged beside it), writes the points to one CSV (so the figure can be redrawn without
the runs), draws the PNG, and prints each run's slope over the last third of its CPU time: the
figure of merit for "which candidate is still learning fastest", decided on the late part of the
curve rather than on its first minutes. Needs matplotlib (`pip install 'streamsr[train]'`).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

FIELDS = ("run", "step", "cpu_h", "margin_db", "psnr_sr", "psnr_bicubic")


def read_run(folder: Path, name: str | None = None) -> list[dict]:
    """One row per validation of a run: step, CPU-hours at that step, margin, PSNRs."""
    by_step: dict[int, dict[str, float]] = defaultdict(dict)
    with open(folder / "log.csv", newline="") as f:
        for row in csv.DictReader(f):
            step, key, value = int(row["step"]), row["key"], float(row["value"])
            if key in ("time/val_cpu_s", "time/cpu_s"):  # a validation's own stamp wins
                if key == "time/val_cpu_s" or "cpu" not in by_step[step]:
                    by_step[step]["cpu"] = value
                by_step[step]["cpu_train" if key == "time/cpu_s" else "cpu_val"] = value
            else:
                by_step[step][key] = value
    rows = []
    for step in sorted(by_step):
        v = by_step[step]
        if "val/margin_db" not in v:
            continue
        cpu = v.get("cpu_val", v.get("cpu_train", v.get("cpu")))
        if cpu is None:
            continue
        rows.append({"run": name or folder.name, "step": step, "cpu_h": cpu / 3600,
                     "margin_db": v["val/margin_db"], "psnr_sr": v.get("val/psnr_sr", np.nan),
                     "psnr_bicubic": v.get("val/psnr_bicubic", np.nan)})
    return rows


def late_slope(rows: list[dict]) -> tuple[float, int]:
    """dB per CPU-hour fitted over the points in the last third of the run's CPU time."""
    if len(rows) < 2:
        return float("nan"), len(rows)
    t = np.array([r["cpu_h"] for r in rows])
    m = np.array([r["margin_db"] for r in rows])
    late = t >= t[-1] - (t[-1] - 0.0) / 3
    if late.sum() < 2:
        late[-2:] = True
    return float(np.polyfit(t[late], m[late], 1)[0]), int(late.sum())


def late_mean(rows: list[dict]) -> float:
    """Mean margin over the points in the last third of the run's CPU time (less noisy than one)."""
    if not rows:
        return float("nan")
    t_end = rows[-1]["cpu_h"]
    return float(np.mean([r["margin_db"] for r in rows if r["cpu_h"] >= t_end * 2 / 3]))


def plot(runs: dict[str, list[dict]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for name, rows in runs.items():
        t = [0.0] + [r["cpu_h"] for r in rows]  # every candidate starts as bicubic (margin 0)
        m = [0.0] + [r["margin_db"] for r in rows]
        slope, _ = late_slope(rows)
        ax.plot(t, m, marker="o", markersize=3, label=f"{name} (last third: {slope:+.2f} dB/CPU-h)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("CPU-hours (process CPU time, data generation included)")
    ax.set_ylabel("validation margin over bicubic (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run folders (their log.csv)")
    ap.add_argument("--from-csv", type=Path, help="redraw from a CSV this script wrote")
    ap.add_argument("--csv", type=Path, help="write the points here")
    ap.add_argument("--png", type=Path, help="draw the figure here")
    ap.add_argument("--title", default="Learning curves, same photos and degradations, 2 shared CPU cores")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {}
    if args.from_csv:
        with open(args.from_csv, newline="") as f:
            for row in csv.DictReader(f):
                runs.setdefault(row["run"], []).append(
                    {k: (row[k] if k == "run" else float(row[k])) for k in FIELDS})
    for folder in args.runs:
        runs[folder.name] = read_run(folder)
    if not runs:
        ap.error("give run folders or --from-csv")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            for rows in runs.values():
                w.writerows({k: (f"{r[k]:.6g}" if k != "run" else r[k]) for k in FIELDS} for r in rows)
    print("| run | validations | CPU-hours | steps | last margin (dB) | best margin (dB) | "
          "mean, last third (dB) | slope, last third (dB/CPU-h) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in runs.items():
        if not rows:
            print(f"| {name} | 0 | - | - | - | - | - | - |")
            continue
        slope, n = late_slope(rows)
        print(f"| {name} | {len(rows)} | {rows[-1]['cpu_h']:.2f} | {int(rows[-1]['step'])} | "
              f"{rows[-1]['margin_db']:+.3f} | {max(r['margin_db'] for r in rows):+.3f} | "
              f"{late_mean(rows):+.3f} | {slope:+.3f} ({n} points) |")
    if args.png:
        plot(runs, args.png, args.title)


if __name__ == "__main__":
    main()
