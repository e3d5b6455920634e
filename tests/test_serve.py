"""`streamsr serve` end to end on files: shared engine, order, outputs, HTTP."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import av
import media
import pytest

from streamsr.serve import serve


def write_config(path, streams: str, server: str = "") -> None:
    path.write_text('[server]\nlisten = "127.0.0.1:0"\ndevice = "cpu"\nbatch = 4\n'
                    f'batch_timeout = 0.02\n{server}\n{streams}')


def file_stream(name: str, src, out) -> str:
    return (f'[[stream]]\nname = "{name}"\ninput = "{src}"\nfile = "{out}"\n'
            'encoder_preset = "ultrafast"\ncrf = 12\n')


class Running:
    """serve() on a thread, with its HTTP port."""

    def __init__(self, config) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

        def on_ready(server, port):
            self.server, self.port = server, port
            self.ready.set()

        def run():
            try:
                serve(config, model=media.BicubicX4(), ready=on_ready, stop=self.stop)
            except BaseException as exc:  # noqa: BLE001
                self.error = exc
                self.ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.ready.wait(60)
        if self.error:
            raise self.error

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def streams(self) -> dict:
        return {s["name"]: s for s in json.loads(self.get("/api/streams")[1])["streams"]}

    def wait_for(self, check, timeout: float = 40.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if check(self.streams()):
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out: {self.streams()}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def decoded_indices(path) -> list[int]:
    with av.open(str(path)) as c:
        return [media.read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_two_files_share_the_engine_keep_order_and_finalise(tmp_path):
    a = media.make_index_clip(tmp_path / "a.mp4", n=20)
    b = media.make_index_clip(tmp_path / "b.mp4", n=9)
    config = tmp_path / "serve.toml"
    write_config(config, file_stream("a", a, tmp_path / "a_x4.mkv")
                 + file_stream("b", b, tmp_path / "b_x4.mkv"))
    run = Running(config)
    try:
        run.wait_for(lambda s: all(x["state"] == "ended" for x in s.values()))
        streams = run.streams()
        assert streams["a"]["frames_out"] == 20 and streams["b"]["frames_out"] == 9
        assert all(sum(s["drops"].values()) == 0 for s in streams.values())
        status, body = run.get("/health")
        assert status == 200 and json.loads(body)["ok"]
        engine = json.loads(run.get("/api/streams")[1])["engine"]
        assert engine["frames"] == 29 and engine["batches"] < 29  # frames were batched
        status, metrics = run.get("/metrics")
        text = metrics.decode()
        assert status == 200
        assert 'streamsr_stream_frames_out_total{stream="a"} 20.0' in text
        assert 'streamsr_stream_dropped_frames_total{cause="queue",stream="b"} 0.0' in text
        assert "streamsr_engine_batch_fill" in text and "streamsr_engine_model_seconds_total" in text
        status, jpeg = run.get("/tile/a.jpg")
        assert status == 200 and jpeg[:2] == b"\xff\xd8"
        assert run.get("/tile/a.jpg?view=bicubic")[0] == 200
        assert run.get("/tile/nope.jpg")[0] == 404
        page = run.get("/")[1].decode()
        assert "/api/streams" in page and "bicubic" in page
    finally:
        run.close()
    assert decoded_indices(tmp_path / "a_x4.mkv") == list(range(20))
    assert decoded_indices(tmp_path / "b_x4.mkv") == list(range(9))


def test_token_is_required_when_set(tmp_path):
    a = media.make_index_clip(tmp_path / "a.mp4", n=3)
    config = tmp_path / "serve.toml"
    write_config(config, file_stream("a", a, tmp_path / "a_x4.mkv"), server='token = "s3cret"')
    run = Running(config)
    try:
        assert run.get("/health")[0] == 401
        assert run.get("/health", token="wrong")[0] == 401
        assert run.get("/health", token="s3cret")[0] in (200, 503)
        assert run.get("/api/streams?token=s3cret")[0] == 200
    finally:
        run.close()


def test_a_stream_whose_output_cannot_open_fails_alone(tmp_path):
    a = media.make_index_clip(tmp_path / "a.mp4", n=6)
    b = media.make_index_clip(tmp_path / "b.mp4", n=6)
    (tmp_path / "taken.mkv").write_bytes(b"x")  # exists, no overwrite
    config = tmp_path / "serve.toml"
    write_config(config, file_stream("good", a, tmp_path / "good.mkv")
                 + file_stream("bad", b, tmp_path / "taken.mkv"))
    run = Running(config)
    try:
        run.wait_for(lambda s: s["bad"]["state"] == "failed" and s["good"]["state"] == "ended")
        status, body = run.get("/health")
        assert status == 503 and "bad: failed" in json.loads(body)["reason"]
    finally:
        run.close()
    assert decoded_indices(tmp_path / "good.mkv") == list(range(6))


@pytest.mark.parametrize("kind", ["missing"])
def test_a_missing_input_file_fails_its_stream_only(tmp_path, kind):
    a = media.make_index_clip(tmp_path / "a.mp4", n=5)
    config = tmp_path / "serve.toml"
    write_config(config, file_stream("good", a, tmp_path / "good.mkv")
                 + file_stream("gone", tmp_path / "gone.mp4", tmp_path / "gone_x4.mkv"))
    run = Running(config)
    try:
        run.wait_for(lambda s: s["gone"]["state"] == "failed" and s["good"]["state"] == "ended")
        assert run.streams()["good"]["frames_out"] == 5
    finally:
        run.close()


@pytest.mark.timeout(120)
def test_bench_streams_runs_both_sides(tmp_path, tiny_weights):
    from streamsr.serve.bench import bench_streams

    result = bench_streams(2, resolution=(32, 24), frames=4, model=str(tiny_weights),
                           encoder_preset="ultrafast", workdir=tmp_path)
    assert result.serve_fps > 0 and result.processes_fps > 0
    assert result.serve_batch_fill > 0 and result.as_dict()["ratio"] > 0
    assert "2 upscale processes" in result.table()
    # latency is measured on both sides (source hand-over to write), fed at the clip's rate
    assert result.realtime and result.serve_latency_mean_s > 0
    assert result.processes_latency_mean_s > 0 and result.as_dict()["latency_ratio"] > 0


def test_realtime_paces_frames_and_restamps_them():
    import time

    from streamsr.serve.worker import realtime
    from streamsr.video.source import Frame

    frames = [Frame(None, i, None, i, wallclock=0.0) for i in range(4)]
    t0 = time.monotonic()
    out = list(realtime(frames, 20))
    assert time.monotonic() - t0 >= 3 / 20 - 0.01  # 4 frames at 20 fps: 3 gaps
    assert [f.index for f in out] == [0, 1, 2, 3]
    assert all(f.wallclock >= t0 for f in out)
    assert all(b.wallclock - a.wallclock >= 1 / 20 - 0.01 for a, b in zip(out, out[1:], strict=False))
    assert list(realtime(frames, None)) == frames  # no frame rate: unchanged


def test_an_output_failing_mid_run_ends_that_output_only(tmp_path, monkeypatch):
    from streamsr.errors import OutputError
    from streamsr.serve import worker

    real_open = worker.open_sink

    class DiskFull:
        def __init__(self, sink) -> None:
            self.sink, self.frames_written = sink, 0

        def write(self, *args, **kwargs) -> None:
            if self.frames_written == 3:
                raise OutputError("cannot write flaky.mkv: No space left on device")
            self.sink.write(*args, **kwargs)
            self.frames_written += 1

        def close(self, trim: bool = False) -> None:
            self.sink.close(trim=trim)

    def open_sink(job, *args):
        sink = real_open(job, *args)
        return DiskFull(sink) if job.dst.endswith("flaky.mkv") else sink

    monkeypatch.setattr(worker, "open_sink", open_sink)
    a = media.make_index_clip(tmp_path / "a.mp4", n=10)
    b = media.make_index_clip(tmp_path / "b.mp4", n=10)
    config = tmp_path / "serve.toml"
    write_config(config, file_stream("a", a, tmp_path / "flaky.mkv")
                 + f'segments = "{tmp_path}/a_seg.mkv"\nsegment_time = 100\n'
                 + file_stream("b", b, tmp_path / "b.mkv"))
    run = Running(config)
    try:
        run.wait_for(lambda s: all(x["state"] == "ended" for x in s.values()))
        streams = run.streams()
        assert streams["a"]["output_errors"] == 1 and streams["a"]["frames_out"] == 10
        assert streams["a"]["outputs"] == [] and streams["b"]["output_errors"] == 0
    finally:
        run.close()
    assert decoded_indices(tmp_path / "a_seg.mkv") == list(range(10))
    assert len(decoded_indices(tmp_path / "flaky.mkv")) == 3  # finalised: playable up to the error
    assert decoded_indices(tmp_path / "b.mkv") == list(range(10))


def test_a_port_in_use_is_one_config_error():
    import socket

    from streamsr.errors import ConfigError
    from streamsr.serve.http import HttpServer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            HttpServer(None, "127.0.0.1", port, None)


@pytest.mark.timeout(120)
def test_bench_streams_cli(tiny_weights):
    """`streamsr bench --streams N`: the table on stderr with --json -, one JSON object on stdout."""
    result = media.invoke("bench", "--streams", 2, "--resolution", "32x24", "--frames", 3,
                          *media.model_args(tiny_weights), "--json", "-")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["streams"] == 2 and data["frames"] == 3 and data["resolution"] == [32, 24]
    assert data["serve_fps"] > 0 and data["processes_fps"] > 0 and data["ratio"] > 0
    assert data["serve_latency_mean_s"] > 0 and data["processes_latency_mean_s"] > 0
    assert "2 upscale processes" in result.stderr and "mean latency" in result.stderr


def test_http_close_ends_open_connections_and_frees_the_port():
    """waitress stops promptly even with a keep-alive connection open, and the port is free
    again afterwards (a restarted `streamsr serve` can listen on it)."""
    import http.client
    import socket

    from streamsr.serve.http import HttpServer

    class Idle:
        def health(self):
            return True, "0 stream(s) ok"

    httpd = HttpServer(Idle(), "127.0.0.1", 0, None)
    httpd.start()
    conn = http.client.HTTPConnection("127.0.0.1", httpd.port, timeout=5)
    conn.request("GET", "/health")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["ok"] is True
    assert response.getheader("Server") == "streamsr"
    t0 = time.monotonic()
    httpd.close()  # the connection above is still open (HTTP/1.1 keep-alive)
    assert time.monotonic() - t0 < 3 and not httpd._thread.is_alive()
    conn.close()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", httpd.port))
