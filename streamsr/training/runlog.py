"""The run's log: every logged value to OUT/log.csv (long format), and to TensorBoard if installed."""

from __future__ import annotations

import csv
import time
from pathlib import Path


class RunLog:
    """Every logged value to log.csv (long format), and to TensorBoard when it is installed."""

    def __init__(self, out: Path, resume_step: int | None) -> None:
        self.path = out / "log.csv"
        if resume_step is not None and self.path.exists():
            # drop rows a crashed run logged after the checkpoint we resume from
            with open(self.path, newline="") as f:
                rows = [r for r in csv.reader(f)]
            keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= resume_step]
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(keep)
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "epoch", "wall_s", "key", "value"])
        self.t0 = time.time()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.tb = None

    def log(self, step: int, epoch: int, values: dict[str, float]) -> None:
        wall = round(time.time() - self.t0, 3)
        for key, value in values.items():
            self.csv.writerow([step, epoch, wall, key, repr(float(value))])
            if self.tb is not None:
                self.tb.add_scalar(key, value, step)
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


__all__ = ["RunLog"]
