"""What a run did: `Stats` of one output (a file, a stream, or the parts of a torchrun job)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stats:
    """What a run did: frames written, time taken, speed, output size, and what was lost."""

    frames: int  # output frames written (= input frames decoded, for files)
    seconds: float  # wall-clock time of the whole run
    fps: float  # frames / seconds
    output_bytes: int
    output: str
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    dropped: int = 0  # frames dropped (live sources only; never for files)
    skipped_packets: int = 0  # corrupt input packets skipped
    truncated: bool = False  # the input ended early; every decodable frame was kept
    interrupted: bool = False
    live: dict | None = None  # live runs: LiveStats.as_dict() (drops, reconnects, latency)

    def summary(self) -> str:
        """One line for people: frames, time, speed, size, and any losses."""
        size = self.output_bytes
        human = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
        w, h = self.output_size
        line = (f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.2f} fps) -> {self.output} "
                f"({w}x{h}, {human})")
        extra = []
        if self.skipped_packets:
            extra.append(f"{self.skipped_packets} corrupt packets skipped")
        if self.truncated:
            extra.append("input truncated: kept every decodable frame")
        if self.dropped:
            extra.append(f"{self.dropped} frames dropped")
        if self.live and self.live.get("reconnects"):
            extra.append(f"{self.live['reconnects']} reconnects ({self.live['downtime_s']:.1f} s down)")
        return line + (f"; {'; '.join(extra)}" if extra else "")
