"""Weights files (`streamsr.models.weights`): a pickle never runs code, and safetensors that do not
match their model are refused in one line before anything large is allocated (fault cases 18-19)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import media
import pytest
import torch
from media import H, W, assert_one_line, cli, invoke, peak_rss_mb, run_api
from test_trainer import prepared  # noqa: F401  (a tiny prepared triplet folder)

from streamsr.errors import WeightsError
from streamsr.models import TINY


class _Payload:
    """Unpickling this creates `marker`: proof that the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_fault_18_pickle_with_a_code_payload_never_runs(tmp_path, prepared):  # noqa: F811
    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"state_dict": {"w": _Payload(marker)}}, protocol=2))
    zipped = tmp_path / "zipped.pth"
    torch.save({"state_dict": {"w": _Payload(marker)}}, zipped)
    as_safetensors = tmp_path / "evil.safetensors"
    as_safetensors.write_bytes(zipped.read_bytes())
    assert not marker.exists()
    clip = media.make_index_clip(tmp_path / "in.mp4", n=2, size=(W, H))
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "paper"\nbatch = 1\nmax_steps = 1\nnum_workers = 0\n')
    for evil in (raw, zipped, as_safetensors):
        r = invoke("upscale", clip, tmp_path / "o.mp4", "--model", evil, "--device", "cpu")
        assert_one_line(r.exit_code, r.stderr, "not a safetensors weights file")
        r = invoke("info", "--model", evil)
        assert_one_line(r.exit_code, r.stderr)
        r = invoke("import-mprnet", evil, tmp_path / "x.safetensors")
        assert_one_line(r.exit_code, r.stderr, "refusing to load")
        r = invoke("train", "--recipe", recipe, "--data", prepared, "--out", tmp_path / "run",
                   "--init-mprnet", evil, "--no-progress")
        assert_one_line(r.exit_code, r.stderr, "refusing to load")
        r = invoke("train", "--recipe", recipe, "--data", prepared, "--out", tmp_path / "run2",
                   "--set", "model=tiny", "--init", evil, "--no-progress")
        assert_one_line(r.exit_code, r.stderr, "not a safetensors weights file")
    ckpts = tmp_path / "run3" / "checkpoints"  # a planted "checkpoint" in a run folder
    ckpts.mkdir(parents=True)
    (ckpts / "step-00000001.pt").write_bytes(zipped.read_bytes())
    r = invoke("train", "--data", prepared, "--out", tmp_path / "run3", "--resume", "--no-progress")
    assert_one_line(r.exit_code, r.stderr, "unreadable")
    # and once in a fresh process, where nothing of ours was imported before the load
    p = cli("upscale", clip, tmp_path / "o.mp4", "--model", zipped, "--device", "cpu", timeout=60)
    assert_one_line(p.returncode, p.stderr, "not a safetensors weights file")
    assert not marker.exists(), "the pickle payload ran"
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "x.safetensors").exists()


def _tensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_fault_19_safetensors_that_do_not_match(tmp_path, clip, tiny_weights):
    from safetensors.torch import save_file

    tensors, meta = _tensors(tiny_weights)
    key = next(k for k, v in tensors.items() if v.ndim == 4)
    cases = []
    reshaped = dict(tensors)
    reshaped[key] = torch.zeros(tuple(tensors[key].shape[:-1]) + (5,))
    save_file(reshaped, str(tmp_path / "shape.safetensors"), metadata=meta)
    cases.append(("shape.safetensors", [key, "mis-shaped"]))
    missing = {k: v for k, v in tensors.items() if k != key}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    cases.append(("missing.safetensors", [key, "missing"]))
    extra = {**tensors, "head.backdoor": torch.zeros(3)}
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    cases.append(("extra.safetensors", ["head.backdoor", "unexpected"]))
    from streamsr.models import LITE

    save_file(tensors, str(tmp_path / "config.safetensors"), metadata={**meta, "config": LITE.to_json()})
    cases.append(("config.safetensors", ["mis-shaped", "'lite'"]))
    hostile = json.loads(TINY.to_json())
    hostile["trunk"]["num_cab"] = 10 ** 7  # would build ten million modules
    save_file(tensors, str(tmp_path / "hostile.safetensors"), metadata={**meta, "config": json.dumps(hostile)})
    cases.append(("hostile.safetensors", ["num_cab"]))
    greedy = json.loads(TINY.to_json())
    greedy["trunk"]["n_feat"] = 512  # a config far larger than the tensors in the file
    greedy["sr_feat"] = 512
    save_file({"x": torch.zeros(1)}, str(tmp_path / "greedy.safetensors"), metadata={**meta, "config": json.dumps(greedy)})
    cases.append(("greedy.safetensors", ["does not match"]))
    (tmp_path / "header.safetensors").write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    cases.append(("header.safetensors", ["not a safetensors weights file"]))
    nometa = tmp_path / "nometa.safetensors"
    save_file(tensors, str(nometa))
    cases.append(("nometa.safetensors", ["not a streamsr weights file"]))
    before = peak_rss_mb()
    for name, words in cases:
        r = invoke("upscale", clip, tmp_path / "o.mp4", "--model", tmp_path / name, "--device", "cpu")
        assert_one_line(r.exit_code, r.stderr, name, *words)
        with pytest.raises(WeightsError):
            run_api(clip, tmp_path / "o.mp4", model=tmp_path / name)
    assert peak_rss_mb() - before < 300
    assert not (tmp_path / "o.mp4").exists()
