"""Prometheus metrics of a running server, read from its state at each scrape.

A custom collector (prometheus-client's documented way to export numbers that live elsewhere)
reads the counters the threads already keep, so the hot path does no metric bookkeeping and
streams added or removed at run time simply appear or vanish from the next scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from streamsr.serve.server import Server


class ServeCollector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator:
        server = self.server
        with server.lock:
            workers = list(server.workers.values())
        label = ["stream"]
        fps_in = GaugeMetricFamily("streamsr_stream_fps_in", "Input frames per second (5 s window)", labels=label)
        fps_out = GaugeMetricFamily("streamsr_stream_fps_out", "Output frames per second (5 s window)", labels=label)
        frames_in = CounterMetricFamily("streamsr_stream_frames_in", "Frames the input delivered (dropped ones included)", labels=label)
        frames_out = CounterMetricFamily("streamsr_stream_frames_out", "Frames written to the outputs", labels=label)
        drops = CounterMetricFamily("streamsr_stream_dropped_frames", "Frames dropped, by cause", labels=["stream", "cause"])
        latency = GaugeMetricFamily("streamsr_stream_latency_seconds", "Decode-to-write latency of the last frame", labels=label)
        reconnects = CounterMetricFamily("streamsr_stream_reconnects", "Reconnects of the live input", labels=label)
        outage = CounterMetricFamily("streamsr_stream_outage_seconds", "Seconds the live input was down", labels=label)
        up = GaugeMetricFamily("streamsr_stream_up", "1 while the stream runs and its input is up", labels=label)
        errors = CounterMetricFamily("streamsr_stream_output_errors", "Outputs that failed", labels=label)
        for w in workers:
            name = [w.name]
            c = w.counters
            fps_in.add_metric(name, w.rate_in.fps())
            fps_out.add_metric(name, w.rate_out.fps())
            frames_in.add_metric(name, w.frames_decoded())
            frames_out.add_metric(name, c.frames_out)
            for cause, n in w.drops().items():
                drops.add_metric([w.name, cause], n)
            latency.add_metric(name, c.latency_last)
            live = w.live
            reconnects.add_metric(name, live.stats.reconnects if live else 0)
            outage.add_metric(name, w.outage_seconds())
            down = live is not None and live.stats.down_since is not None
            up.add_metric(name, 1.0 if w.state == "running" and not down else 0.0)
            errors.add_metric(name, c.output_errors)
        yield from (fps_in, fps_out, frames_in, frames_out, drops, latency, reconnects, outage,
                    up, errors)
        e = server.counters
        yield CounterMetricFamily("streamsr_engine_batches", "Shared batches run", value=e.batches)
        yield CounterMetricFamily("streamsr_engine_frames", "Frames run through the model", value=e.frames)
        yield GaugeMetricFamily("streamsr_engine_batch_fill", "Mean frames per batch / batch size", value=e.fill_mean)
        yield GaugeMetricFamily("streamsr_engine_batch_size", "Frames per shared batch at most", value=server.batch)
        yield CounterMetricFamily("streamsr_engine_model_seconds", "Seconds spent in model calls", value=e.model_seconds)
        yield GaugeMetricFamily("streamsr_engine_up", "1 while the shared engine runs", value=1.0 if server.engine_alive() else 0.0)


def registry_for(server: Server) -> CollectorRegistry:
    """A registry of this server's metrics only (no process-global state between servers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServeCollector(server))
    return registry
