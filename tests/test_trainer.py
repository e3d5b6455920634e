"""Training: loss goes down, exact resume (after Ctrl-C and after a corrupt checkpoint), refusing
to mix runs, weight export, DDP with two gloo processes == one process. (Recipes: test_recipe.py.)"""

from __future__ import annotations

import csv
import logging
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from skimage import data as skdata

from streamsr.data.dataset import TripletDataset
from streamsr.data.prepare import prepare_gopro
from streamsr.data.triplets import CropSettings
from streamsr.errors import ConfigError, InputError, Interrupted, OutputError, WeightsError
from streamsr.models import TINY, DeblurSR
from streamsr.models.weights import load_model
from streamsr.training.losses import joint_loss
from streamsr.training.recipe import Recipe, load_recipe
from streamsr.training.setup import build_model
from streamsr.training.trainer import list_checkpoints, load_latest_checkpoint, train

REPO = Path(__file__).resolve().parent.parent
MOTION = np.zeros((9, 9), np.float32)
MOTION[4, :] = 1 / 9


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CI box has 2 shared cores: oversubscribed OpenMP threads make tiny convs ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """36 training and 6 test triplets (LR 16 px, HR 64 px) from four real photos."""
    root = tmp_path_factory.mktemp("train_data")
    src = root / "GOPRO"
    photos = [("astro", skdata.astronaut()), ("cat", skdata.chelsea()), ("coffee", skdata.coffee()),
              ("rocket", skdata.rocket())]
    for i, (name, img) in enumerate(photos):
        split = "test" if name == "rocket" else "train"
        sharp = cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA)
        blur = cv2.filter2D(sharp, -1, MOTION, borderType=cv2.BORDER_REFLECT)
        for frame in ("000001", "000002") if split == "train" else ("000001",):
            for kind, im in (("sharp", sharp), ("blur", blur)):
                d = src / split / f"S{i}_{name}" / kind
                d.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(d / f"{frame}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    dst = root / "prep"
    summary = prepare_gopro(src, dst, CropSettings(64, 32, 4))
    assert summary.per_split == {"train": 36, "test": 6}
    return dst


# 36 triplets / batch 3 = 12 steps per epoch; 16 steps cross one epoch boundary.
RECIPE = Recipe(name="t", model="tiny", batch=3, epochs=5, max_steps=16, lr=2e-3, lr_min=2e-4,
                patch=8, augment=True, num_workers=0, log_every=1, checkpoint_every=4, keep_last=3,
                val_max=6, seed=7)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _loss_rows(run: Path) -> dict[int, float]:
    with open(run / "log.csv", newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["key"] == "train/loss"}


@pytest.fixture(scope="module")
def reference_run(prepared, tmp_path_factory) -> Path:
    """An uninterrupted run: the yardstick for resumed ones."""
    out = tmp_path_factory.mktemp("runs") / "A"
    res = train(prepared, out, RECIPE)
    assert res.step == 16 and res.epoch == 1
    return out


def test_training_lowers_the_loss_and_exports_weights(prepared, reference_run):
    # the joint loss on held-out triplets: trained weights vs the same architecture untrained
    val = TripletDataset(prepared, "test")
    lr_blur, lr, hr = (torch.stack(t) for t in zip(*[val[i] for i in range(len(val))], strict=True))
    torch.manual_seed(RECIPE.seed)
    fresh = DeblurSR(TINY).eval()
    trained = load_model(reference_run / "model.safetensors")
    with torch.no_grad():
        before = float(joint_loss(fresh(lr_blur), lr, hr).total)
        after = float(joint_loss(trained(lr_blur), lr, hr).total)
    assert after < 0.8 * before, (before, after)
    assert (reference_run / "best.safetensors").exists()
    with open(reference_run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["key"] for r in rows} >= {"train/loss", "train/lr", "val/psnr_sr", "val/psnr_lr3",
                                        "val/ssim_sr", "val/ssim_lr3"}
    val_steps = [int(r["step"]) for r in rows if r["key"] == "val/psnr_sr"]
    assert val_steps == [12, 16]  # end of epoch 0, end of the step budget
    lrs = [float(r["value"]) for r in rows if r["key"] == "train/lr"]
    assert lrs[-1] == pytest.approx(RECIPE.lr_min) and all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    out = trained(torch.rand(1, 3, 12, 20))
    assert out.hr.shape == (1, 3, 48, 80)


def test_ctrl_c_saves_and_resume_is_bit_exact(prepared, reference_run, tmp_path):
    out = tmp_path / "B"

    def interrupt(step: int, loss: float) -> None:
        if step == 7:  # mid-epoch, between checkpoints
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        train(prepared, out, RECIPE, on_step=interrupt)
    assert info.value.exit_code == 128 + signal.SIGINT
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004.pt", "step-00000007.pt"]
    assert not (out / "model.safetensors").exists()
    with pytest.raises(OutputError):  # the run exists: refuse to start over it silently
        train(prepared, out, RECIPE)
    with pytest.raises(ConfigError, match="lr"):
        train(prepared, out, replace(RECIPE, lr=1e-3), resume=True)
    res = train(prepared, out, None, resume=True)  # the recipe comes from the checkpoint
    assert res.step == 16
    a, b = _weights(reference_run / "model.safetensors"), _weights(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from uninterrupted"
    assert _loss_rows(out) == _loss_rows(reference_run)


def test_corrupt_latest_checkpoint_falls_back(prepared, reference_run, tmp_path, caplog):
    import shutil

    out = tmp_path / "C"
    shutil.copytree(reference_run, out)
    ckpts = list_checkpoints(out)
    assert [p.name for p in ckpts] == ["step-00000008.pt", "step-00000012.pt", "step-00000016.pt"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:5000])  # torn write
    (out / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING):
        state, path = load_latest_checkpoint(out)
    assert path.name == "step-00000012.pt" and state["step"] == 12
    assert "falling back" in caplog.text
    res = train(prepared, out, RECIPE, resume=True)
    assert res.step == 16
    a, b = _weights(reference_run / "model.safetensors"), _weights(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for p in list_checkpoints(out):
        p.write_bytes(b"garbage")
    with pytest.raises(WeightsError):
        load_latest_checkpoint(out)


def test_init_from_weights_file(reference_run):
    model = build_model(RECIPE, None, reference_run / "model.safetensors")
    ref = _weights(reference_run / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ref.items())
    with pytest.raises(WeightsError):
        build_model(replace(RECIPE, model="lite"), None, reference_run / "model.safetensors")
    with pytest.raises(ConfigError):
        build_model(RECIPE, reference_run / "x.pth", None)  # --init-mprnet needs model=paper


def test_init_mprnet_loads_the_official_trunk(tmp_path):
    from streamsr.models import MPRNet

    torch.manual_seed(1)
    official = MPRNet()
    ckpt = tmp_path / "model_deblurring.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.state_dict().items()}}, ckpt)
    model = build_model(replace(RECIPE, model="paper"), ckpt, None)
    trunk = model.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in official.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) == 21_839_972


def test_ddp_two_gloo_processes_match_one(prepared, tmp_path):
    """torchrun, 2 CPU processes x batch 2 == 1 process x batch 4 (same global batch)."""
    recipe = ["--set", "data=prepared", "--set", "model=tiny", "--set", "max_steps=5", "--set", "patch=8",
              "--set", "num_workers=0", "--set", "log_every=1", "--set", "val_max=4",
              "--set", "lr=2e-3", "--set", "lr_min=2e-4", "--set", "checkpoint_every=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = train(prepared, tmp_path / "one", load_recipe(REPO / "train" / "lite_synthetic.toml"),
                   [r for r in recipe if r != "--set"] + ["batch=4"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "streamsr", "-v", "train", "--recipe", str(REPO / "train" / "lite_synthetic.toml"),
           "--data", str(prepared), "--out", str(tmp_path / "two"), "--set", "batch=2", *recipe]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _loss_rows(tmp_path / "one"), _loss_rows(tmp_path / "two")
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-6)
    assert single.step == 5
    a, b = _weights(tmp_path / "one" / "model.safetensors"), _weights(tmp_path / "two" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)

    # Rank 0 alone logs and saves: one header and no (step, key) twice in the shared log.csv ...
    with open(tmp_path / "two" / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "epoch", "wall_s", "key", "value"]
    assert sum(r == rows[0] for r in rows) == 1
    keys = [(r[0], r[3]) for r in rows[1:]]
    assert len(keys) == len(set(keys)) and ("5", "val/psnr_sr") in keys
    # ... the same validation as one process (each rank scores half the images, then all_reduce) ...
    val = {key: float(r[4]) for r in rows[1:] for key in [r[3]] if key.startswith("val/")}
    with open(tmp_path / "one" / "log.csv", newline="") as f:
        val_one = {r["key"]: float(r["value"]) for r in csv.DictReader(f) if r["key"].startswith("val/")}
    assert val.keys() == val_one.keys() and all(val[k] == pytest.approx(val_one[k], abs=1e-3) for k in val)
    # ... and one set of checkpoints: a single save of each file, by the 2-process run.
    ckpts = list((tmp_path / "two" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-00000005.pt"]  # no stray temporary files either
    assert torch.load(ckpts[0], weights_only=True)["sampler"]["world"] == 2
    assert proc.stderr.count("streamsr.training.trainer: checkpoint ") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("streamsr.training.trainer: final weights: ") == 1
    assert proc.stderr.count("streamsr.training.trainer: training tiny ") == 1


def test_cpu_bf16_autocast_steps(prepared, tmp_path):
    short = replace(RECIPE, max_steps=2, val_max=2)
    bf16 = train(prepared, tmp_path / "bf16", replace(short, precision="bf16"))
    fp32 = train(prepared, tmp_path / "fp32", replace(short, precision="fp32"))
    assert bf16.step == 2 and [s for s, _ in bf16.losses] == [1, 2]
    assert all(math.isfinite(v) for _, v in bf16.losses)
    state = torch.load(list_checkpoints(tmp_path / "bf16")[-1], weights_only=True)
    assert state["precision"] == "bf16" and state["recipe"]["precision"] == "bf16"
    # Same seed, same first batch, same initial weights: only the bf16 forward pass separates the
    # two first losses, by about bf16's precision (8 bits of mantissa).
    (_, b), (_, f) = bf16.losses[0], fp32.losses[0]
    assert b != f and b == pytest.approx(f, rel=0.05)


def test_gradient_clipping_logs_the_norm_before_and_steps_with_the_clipped_one(prepared, tmp_path,
                                                                               monkeypatch):
    def global_norm(params) -> float:
        return float(torch.linalg.vector_norm(torch.stack(
            [p.grad.detach().norm() for p in params if p.grad is not None])))

    real_clip, measured = torch.nn.utils.clip_grad_norm_, []

    def clip_and_measure(params, max_norm, *args, **kwargs):
        params = list(params)
        before = global_norm(params)
        total = real_clip(params, max_norm, *args, **kwargs)
        measured.append((before, global_norm(params)))  # what the optimizer step will use
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_measure)
    clip = 0.05
    short = replace(RECIPE, max_steps=3, val_max=2)
    train(prepared, tmp_path / "clipped", replace(short, grad_clip=clip))
    with open(tmp_path / "clipped" / "log.csv", newline="") as f:
        logged = [float(r["value"]) for r in csv.DictReader(f) if r["key"] == "train/grad_norm"]
    assert len(measured) == len(logged) == 3
    for (before, after), log_value in zip(measured, logged, strict=True):
        assert before > clip  # the clip was active at every step ...
        assert log_value == pytest.approx(before, rel=1e-5)  # ... the log has the norm before it
        assert after == pytest.approx(clip, rel=1e-4) and after <= clip * (1 + 1e-6)

    measured.clear()
    train(prepared, tmp_path / "free", replace(short, grad_clip=0))
    assert measured == []  # grad_clip = 0: never clipped, no grad_norm logged
    with open(tmp_path / "free" / "log.csv", newline="") as f:
        assert "train/grad_norm" not in {r["key"] for r in csv.DictReader(f)}
    a = _weights(tmp_path / "clipped" / "model.safetensors")
    b = _weights(tmp_path / "free" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # clipping reached the updates


def test_best_weights_hold_the_best_validation_psnr(prepared, reference_run):
    from streamsr.models.weights import read_metadata
    from streamsr.training.trainer import validate

    with open(reference_run / "log.csv", newline="") as f:
        psnrs = {int(r["step"]): float(r["value"]) for r in csv.DictReader(f)
                 if r["key"] == "val/psnr_sr"}
    best_step = max(psnrs, key=psnrs.get)
    meta = read_metadata(reference_run / "best.safetensors")
    assert meta["step"] == str(best_step)
    assert float(meta["val_psnr_sr"]) == pytest.approx(psnrs[best_step], abs=5e-5)  # 4 decimals
    # the weights in the file are the ones that scored it (re-validated here)
    model = load_model(reference_run / "best.safetensors")
    val = TripletDataset(prepared, RECIPE.val_split, 0, False, RECIPE.seed, RECIPE.val_max)
    again = validate(model, val, torch.device("cpu"), RECIPE.val_batch, None)
    assert again["val/psnr_sr"] == pytest.approx(psnrs[best_step], abs=1e-4)
    final = _weights(reference_run / "model.safetensors")
    best = _weights(reference_run / "best.safetensors")
    same = all(torch.equal(best[k], final[k]) for k in final)
    assert same == (best_step == max(psnrs))  # the final weights only when the last was best


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_training_steps(prepared, tmp_path):
    res = train(prepared, tmp_path / "gpu", replace(RECIPE, max_steps=6), device="cuda")
    assert res.step == 6 and all(np.isfinite(v) for _, v in res.losses)
    state = torch.load(list_checkpoints(tmp_path / "gpu")[-1], weights_only=True)
    assert state["recipe"]["precision"] == "auto"
    assert state["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


# --- diverging runs, the wrong data folder ------------------------------------------------

def test_a_diverging_run_stops_and_keeps_only_finite_checkpoints(prepared, tmp_path):
    # lr 0.1 without clipping really diverges on this data within a few steps (no injection)
    recipe = replace(RECIPE, lr=0.1, lr_min=1e-5, grad_clip=0.0, checkpoint_every=1, log_every=5,
                     max_steps=40)
    out = tmp_path / "run"
    losses: list[tuple[int, float]] = []
    with pytest.raises(Exception) as e:
        train(prepared, out, recipe, on_step=lambda s, v: losses.append((s, v)))
    from streamsr.training.trainer import DivergedError

    assert isinstance(e.value, DivergedError), e.value
    msg = str(e.value)
    assert "\n" not in msg and "diverged" in msg
    first_bad = next(s for s, v in losses if not math.isfinite(v))
    assert f"at step {first_bad}" in msg
    saved = list_checkpoints(out)
    assert saved, "the checkpoints before the divergence are kept"
    assert str(saved[-1]) in msg
    for path in saved:  # every file left is usable: no NaN reached the disk
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["step"] < first_bad
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()
    best = out / "best.safetensors"
    if best.exists():
        assert all(torch.isfinite(v).all() for v in _weights(best).values())
    # and --resume from the last good checkpoint does not hide it: it diverges again, one line
    with pytest.raises(DivergedError):
        train(prepared, out, None, resume=True)


def test_photos_recipe_on_a_prepared_folder_and_the_reverse_are_refused(prepared, tmp_path):
    photos = replace(RECIPE, data="photos", patch=8)
    with pytest.raises(ConfigError, match=r"`streamsr prepare` folder.*data=prepared"):
        train(prepared, tmp_path / "a", photos)
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "astro.png"), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    with pytest.raises(InputError, match=r"folder of images.*data=photos.*prepare synthetic"):
        train(folder, tmp_path / "b", RECIPE)
    pairs = tmp_path / "GOPRO" / "train" / "S0"
    for kind in ("blur", "sharp"):
        (pairs / kind).mkdir(parents=True)
        cv2.imwrite(str(pairs / kind / "1.png"), skdata.astronaut())
    with pytest.raises(ConfigError, match="blurry/sharp image pairs"):
        train(tmp_path / "GOPRO", tmp_path / "c", photos)
    with pytest.raises(InputError, match="prepare gopro"):
        train(tmp_path / "GOPRO", tmp_path / "d", RECIPE)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel") and os.geteuid() == 0,
                    reason="needs a folder this user cannot write in")
def test_default_out_in_a_read_only_working_directory_is_one_line(prepared, tmp_path):
    if os.geteuid() == 0:
        cwd = Path("/sys/kernel")  # refused by the kernel even for root
    else:
        cwd = tmp_path / "ro"
        cwd.mkdir()
        cwd.chmod(0o555)
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "tiny"\nbatch = 3\nmax_steps = 1\nnum_workers = 0\npatch = 8\n')
    r = subprocess.run([sys.executable, "-m", "streamsr", "train", "--recipe", str(recipe),
                        "--data", str(prepared), "--no-progress"], capture_output=True, text=True,
                       timeout=120, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("streamsr: error:")]
    assert len(lines) == 1 and "run folder runs/train" in lines[0], r.stderr


def test_bad_device_and_incomplete_checkpoint_are_one_line_errors(prepared, reference_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown device 'bogus'"):
        train(prepared, tmp_path / "a", RECIPE, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train(prepared, tmp_path / "b", RECIPE, device="cuda")
    # a checkpoint with the right format marker but parts missing (KeyError traceback before)
    run = tmp_path / "planted"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"format": "streamsr-checkpoint-v1", "model": {}},
               run / "checkpoints" / "step-00000004.pt")
    with pytest.raises(WeightsError, match="unreadable"):
        train(prepared, run, None, resume=True)


def test_a_run_saved_before_a_recipe_key_existed_still_resumes():
    """A checkpoint's recipe without `degradations` (runs started before the key existed) counts
    as the default, so `--resume` with today's recipe is not refused as a changed recipe."""
    from streamsr.training.trainer import resolve_recipe

    old = {k: v for k, v in RECIPE.to_dict().items() if k != "degradations"}
    assert resolve_recipe(None, [], {"recipe": old}) == RECIPE
    assert resolve_recipe(RECIPE, [], {"recipe": old}) == RECIPE
    with pytest.raises(ConfigError, match="degradations"):
        resolve_recipe(RECIPE, ["degradations=shake"], {"recipe": old})


FAULT_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}


# --- training interrupted the hard way (fault cases 22-23, docs/faults.md) -------------------------------------------------------

_TRAIN_CHILD = r"""
import sys, time
from streamsr.training.recipe import load_recipe
from streamsr.training.trainer import train

def step(n, loss):
    print(n, flush=True)
    time.sleep(0.3)

train(sys.argv[1], sys.argv[2], load_recipe(sys.argv[3]), on_step=step)
"""


def test_fault_22_23_sigkill_between_checkpoints_then_resume_past_a_corrupt_one(tmp_path, prepared):
    from streamsr.training.recipe import Recipe
    from streamsr.training.trainer import list_checkpoints, load_latest_checkpoint, train

    recipe = Recipe(name="faults", model="tiny", batch=3, epochs=1, max_steps=8, lr=2e-3,
                    lr_min=2e-4, patch=8, num_workers=0, log_every=1, checkpoint_every=2,
                    keep_last=4, val_max=2, seed=3)
    toml = tmp_path / "r.toml"
    toml.write_text(recipe.to_toml())
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_CHILD, str(prepared), str(out), str(toml)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=FAULT_ENV)
    try:
        for line in proc.stdout:
            if line.strip() == "5":  # checkpoints at 2 and 4 are on disk; step 5 is done but unsaved
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    names = [p.name for p in list_checkpoints(out)]
    assert names[:2] == ["step-00000002.pt", "step-00000004.pt"] and len(names) <= 3, names
    # 22: the last checkpoint loads; a torn temp file from a write in progress is ignored
    (out / "checkpoints" / ".step-00000006.pt.tmp").write_bytes(b"half a checkpoint")
    state, path = load_latest_checkpoint(out)
    assert path.name == names[-1] and state["step"] == int(names[-1][5:13])
    assert not (out / "model.safetensors").exists()
    # 23: the newest checkpoint is corrupt -> the one before is used, with a warning
    newest = list_checkpoints(out)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    r = subprocess.run([sys.executable, "-m", "streamsr", "train", "--data", str(prepared), "--out",
                        str(out), "--resume", "--no-progress"], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=FAULT_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "unreadable" in r.stderr and "falling back" in r.stderr and "Traceback" not in r.stderr
    # the resumed run ends exactly where an uninterrupted one does
    # (same thread count as the subprocesses, OMP_NUM_THREADS=1: CPU reductions are only
    # bit-reproducible for a fixed number of threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train(prepared, tmp_path / "ref", recipe)
    finally:
        torch.set_num_threads(threads)
    assert ref.step == 8
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
