"""The training loop: one file, top to bottom, from a recipe and a prepared folder to weights.

Adam + cosine annealing to `lr_min` (per optimizer step), the paper's joint loss, bf16 autocast
on GPUs that support it, gradient clipping, seeded and deterministic. DistributedDataParallel
when launched by torchrun (RANK / WORLD_SIZE in the environment): gloo on CPU, NCCL on CUDA, a
DistributedSampler, logging and saving on rank 0 only.

Resuming is exact: a checkpoint holds the model, optimizer, scheduler, grad scaler, RNG states
and the position in the epoch's sample order, and every sample's crop and augmentation derive
from (seed, epoch, index), so a resumed CPU run ends with the same weights, bit for bit, as an
uninterrupted one. Run folder:

    OUT/recipe.toml                   the recipe in effect
    OUT/log.csv                       step, epoch, wall_s, key, value (every logged value)
    OUT/checkpoints/step-NNNNNNNN.pt  the last `keep_last` checkpoints (atomic writes)
    OUT/best.safetensors              weights with the best validation PSNR of the SR output
    OUT/model.safetensors             final weights, for `streamsr upscale --model OUT/model.safetensors`
    OUT/tensorboard/                  when the tensorboard package is installed
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import re
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from streamsr.data.dataset import TripletDataset
from streamsr.data.shake_dataset import ShakeDataset
from streamsr.errors import (
    ConfigError,
    InputError,
    Interrupted,
    OutputError,
    StreamsrError,
    WeightsError,
)
from streamsr.metrics import psnr, ssim
from streamsr.models import DeblurSR, count_parameters, get_config
from streamsr.models.ops import resize_bicubic
from streamsr.models.weights import import_mprnet, load_weights, model_config, save_model
from streamsr.runtime import (
    DistEnv,
    ProcessGroup,
    StopSignals,
    device_for,
    dist_env,
    resolve_device,
    resolve_precision,
)
from streamsr.training.losses import joint_loss
from streamsr.training.recipe import Recipe, apply_overrides, recipe_from_dict

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "streamsr-checkpoint-v1"
_CKPT_RE = re.compile(r"^step-(\d{8})\.pt$")
_CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "scaler", "rng", "sampler", "step", "best",
                    "recipe"}
# Recipe values that may change when a run resumes: they do not alter what is computed.
RESUMABLE_CHANGES = {"name", "log_every", "val_every", "checkpoint_every", "keep_last",
                     "num_workers", "val_batch"}


class DivergedError(StreamsrError):
    """The loss or the weights stopped being finite numbers: the run stops without saving them."""


# fp16 runs: the gradient scaler skips a step whose loss or gradients overflowed and lowers its
# scale, so a few non-finite steps in a row are normal; this many in a row is divergence.
FP16_NONFINITE_STEPS = 20


@dataclass
class TrainResult:
    """Where a run's outputs are and how it ended."""

    out: Path
    step: int
    epoch: int
    model_path: Path | None  # final safetensors (None when interrupted)
    best_path: Path | None
    best_psnr: float | None
    val: dict[str, float] = field(default_factory=dict)  # the last validation
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) as logged


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def _precision(recipe: Recipe, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32), by the runtime's policy for training."""
    dtype = resolve_precision(recipe.precision, dev, training=True)
    return None if dtype == torch.float32 else dtype


def _autocast(dev: torch.device, dtype: torch.dtype | None):
    """Mixed precision when `dtype` is set, else nothing (plain fp32)."""
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _ignore_sigint() -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_init(_: int) -> None:
    _ignore_sigint()


# --- model initialisation ------------------------------------------------------------------------

def _build_model(recipe: Recipe, init_mprnet: str | os.PathLike | None,
                 init: str | os.PathLike | None) -> DeblurSR:
    """A model of the recipe's config: random, from an MPRNet checkpoint, or from weights."""
    if init_mprnet and init:
        raise ConfigError("give --init-mprnet or --init, not both")
    cfg = get_config(recipe.model)
    if init_mprnet:
        if recipe.model != "paper":
            raise ConfigError(f"--init-mprnet loads the paper-size trunk, but the recipe's model is "
                              f"{recipe.model!r}; use --set model=paper")
        return import_mprnet(init_mprnet, seed=recipe.seed)
    model = DeblurSR(cfg)
    if init:
        have = model_config(init)
        if replace(have, name=cfg.name) != cfg:
            raise WeightsError(f"{init} holds a {have.name!r} model, not the recipe's "
                               f"{recipe.model!r} model")
        load_weights(model, init)
    return model


def _cosine(recipe: Recipe, total_steps: int) -> Callable[[int], float]:
    """LR multiplier at step t: cosine from lr down to lr_min over the run (closed form)."""
    ratio = recipe.lr_min / recipe.lr

    def factor(t: int) -> float:
        progress = min(t, total_steps) / max(1, total_steps)
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


# --- checkpoints ---------------------------------------------------------------------------------

def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _CKPT_RE.match(p.name)), key=lambda p: p.name)


def save_checkpoint(state: dict, out: Path, step: int, keep_last: int) -> Path:
    """Write step-N.pt atomically (temp file, fsync, rename), then prune to the last `keep_last`."""
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    tmp = folder / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write checkpoint {path}: {exc.strerror}") from None
    for old in list_checkpoints(out)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(out: str | os.PathLike) -> tuple[dict, Path]:
    """The newest readable checkpoint of a run; a corrupt one is skipped with a warning."""
    paths = list_checkpoints(out)
    if not paths:
        raise ConfigError(f"nothing to resume: {out} has no checkpoints")
    for path in reversed(paths):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a streamsr checkpoint")
            missing = sorted(_CHECKPOINT_KEYS - set(state))
            if missing or not isinstance(state["recipe"], dict):
                raise ValueError(f"incomplete checkpoint (missing {missing or ['recipe']})")
            return state, path
        except Exception as exc:  # truncated zip, bad pickle, wrong content: try the one before
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one",
                        path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
    raise WeightsError(f"every checkpoint in {Path(out) / 'checkpoints'} is unreadable")


# --- logging -------------------------------------------------------------------------------------

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


# --- validation ----------------------------------------------------------------------------------

@torch.no_grad()
def validate(model: nn.Module, data: TripletDataset, dev: torch.device, batch: int,
             autocast: torch.dtype | None, d: DistEnv | None = None) -> dict[str, float]:
    """Mean PSNR/SSIM of the SR output vs H and of the stage-3 LR image vs L (ranks share it)."""
    d = d or DistEnv()
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)  # psnr_sr, ssim_sr, psnr_lr, ssim_lr, count, bicubic
    idx = list(range(d.rank, len(data), d.world_size))
    for start in range(0, len(idx), batch):
        items = [data[i] for i in idx[start:start + batch]]
        lr_blur, lr, hr = (torch.stack(t).to(dev) for t in zip(*items, strict=True))
        with _autocast(dev, autocast):
            out = model(lr_blur)
        sr, lr3 = out.hr.float().clamp(0, 1), out.stages[0].float().clamp(0, 1)
        sums[0] += psnr(sr, hr, reduction="none").sum().cpu()
        # the baseline every margin is quoted against: bicubic x4 of the same blurry input
        bic = resize_bicubic(lr_blur.float(), tuple(hr.shape[-2:])).clamp(0, 1)
        sums[5] += psnr(bic, hr, reduction="none").sum().cpu()
        sums[2] += psnr(lr3, lr, reduction="none").sum().cpu()
        if min(lr.shape[-2:]) >= 11:
            sums[1] += ssim(sr, hr, reduction="none").sum().cpu()
            sums[3] += ssim(lr3, lr, reduction="none").sum().cpu()
        sums[4] += len(items)
    if d.world_size > 1:
        sums = sums.to(dev) if dev.type == "cuda" else sums
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.train(was_training)
    n = max(1.0, float(sums[4]))
    res = {"val/psnr_sr": float(sums[0]) / n, "val/psnr_lr3": float(sums[2]) / n,
           "val/psnr_bicubic": float(sums[5]) / n, "val/margin_db": float(sums[0] - sums[5]) / n}
    if min(data[0][1].shape[-2:]) >= 11:
        res.update({"val/ssim_sr": float(sums[1]) / n, "val/ssim_lr3": float(sums[3]) / n})
    return res


# --- the loop ------------------------------------------------------------------------------------

def _resolve_recipe(recipe: Recipe | None, overrides: Sequence[str], saved: dict | None) -> Recipe:
    """The recipe in effect: given (or the checkpoint's on resume) plus overrides, checked."""
    base = recipe
    if base is None:
        if saved is None:
            raise ConfigError("no recipe: pass --recipe (or --resume a run that has checkpoints)")
        base = recipe_from_dict(saved["recipe"], "checkpoint recipe")
    final = apply_overrides(base, list(overrides))
    if saved is not None:
        before = saved["recipe"]
        changed = sorted(k for k, v in final.to_dict().items()
                         if k not in RESUMABLE_CHANGES and before.get(k) != v)
        if changed:
            diffs = ", ".join(f"{k}: {before.get(k)!r} -> {final.to_dict()[k]!r}" for k in changed)
            raise ConfigError(f"the recipe differs from the run being resumed ({diffs}); resume "
                              f"with the same recipe or start a new --out")
    return final


def train(data: str | os.PathLike, out: str | os.PathLike, recipe: Recipe | None = None,
          overrides: Sequence[str] = (), resume: bool = False,
          init_mprnet: str | os.PathLike | None = None, init: str | os.PathLike | None = None,
          device: str | None = None, progress: bool = False,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train a model from a prepared triplet folder into the run folder `out`.

    `on_step(step, loss)` is called after every optimizer step (for tests and notebooks).
    Raises `Interrupted` after saving a checkpoint when SIGINT/SIGTERM arrives.
    """
    out = Path(out)
    d = dist_env()
    if device is not None:
        resolve_device(device)  # a bogus name or a missing GPU: one line, not torch's traceback
    dev = torch.device(device_for(d, device or "auto"))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    with ProcessGroup(d, str(dev)):
        return _train(d, dev, Path(data), out, recipe, overrides, resume, init_mprnet, init,
                      progress, on_step)


def _train(d: DistEnv, dev: torch.device, data: Path, out: Path, recipe: Recipe | None,
           overrides: Sequence[str], resume: bool, init_mprnet, init, progress: bool,
           on_step: Callable[[int, float], None] | None) -> TrainResult:
    """`train` inside the process group: resume or start, then run."""
    saved, saved_path = None, None
    if resume:
        saved, saved_path = load_latest_checkpoint(out)
        log.info("resuming from %s (step %d)", saved_path, saved["step"])
    elif list_checkpoints(out):
        raise OutputError(f"{out} already holds a training run; pass --resume to continue it or "
                          f"choose another --out")
    recipe = _resolve_recipe(recipe, overrides, saved)
    if d.main:  # before any data is read: an unwritable --out fails in a second, not later
        _make_run_folder(out)
    if saved is not None and (init or init_mprnet):
        log.warning("--init/--init-mprnet ignored: resuming from %s", saved_path)
        init = init_mprnet = None
    return _Run(recipe, data, out, d, dev, progress, on_step).run(saved, init_mprnet, init)


def _make_run_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {out}: {exc.strerror}; pass --out "
                          f"a writable folder") from None
    if not os.access(out, os.W_OK):
        raise OutputError(f"the run folder {out} is not writable; pass --out a writable folder")


class _Run:
    """One training run's state; `run` is the loop."""

    def __init__(self, recipe: Recipe, data: Path, out: Path, d: DistEnv, dev: torch.device,
                 progress: bool, on_step: Callable[[int, float], None] | None) -> None:
        self.recipe, self.data, self.out, self.d, self.dev = recipe, data, out, d, dev
        self.progress, self.on_step = progress, on_step

    def _state(self, epoch: int, batch_in_epoch: int, step: int) -> dict:
        r = self.recipe
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "model_config": self.model.config.to_json(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": epoch, "step": step,
                "sampler": {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "batch": r.batch,
                            "world": self.d.world_size, "seed": r.seed},
                "rng": _rng_state(), "recipe": r.to_dict(), "precision": self.precision,
                "best": {"psnr": self.best_psnr, "step": self.best_step},
                "cpu_s": self._cpu_s()}

    def _cpu_s(self) -> float:
        """CPU-seconds this run has used so far, across resumes (this process, its threads and
        the data workers it has reaped): the x axis of learning curves on a shared machine."""
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self.cpu_offset + time.process_time() + kids.ru_utime + kids.ru_stime

    def _watch(self, step: int, loss: torch.Tensor, gnorm: torch.Tensor | None) -> None:
        """Record, on the device (no sync), whether this step's loss and gradients are finite."""
        ok = torch.isfinite(loss.detach().float())
        if gnorm is not None and not self.scaler.is_enabled():
            ok = ok & torch.isfinite(gnorm.detach().float())
        self._bad_run = torch.where(ok, torch.zeros_like(self._bad_run), self._bad_run + 1)
        self._bad_max = torch.maximum(self._bad_max, self._bad_run)
        self._bad_first = torch.where(~ok & (self._bad_first == 0),
                                      torch.full_like(self._bad_first, step), self._bad_first)

    def _check_finite(self, step: int, weights: bool = False) -> None:
        """Stop with one line once the run has diverged (every rank calls this at the same step).

        Called before anything is saved (checkpoint, best weights) and at each log step, so a
        NaN never reaches a file: the checkpoints on disk stay the last good ones.
        """
        flags = torch.stack([self._bad_first, self._bad_max])
        if weights:
            bad_w = sum((~torch.isfinite(p.detach())).sum() for p in self.model.parameters())
            flags = torch.cat([flags, bad_w.reshape(1).to(flags)])
        if self.d.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        values = flags.tolist()
        first, worst = values[0], values[1]
        bad_weights = values[2] if weights else 0
        limit = FP16_NONFINITE_STEPS if self.scaler.is_enabled() else 0
        if worst <= limit and not bad_weights:
            return
        r = self.recipe
        what = (f"the loss or gradients stopped being finite numbers at step {first}"
                if worst > limit else f"{bad_weights} weights became NaN or infinite by step {step}")
        good = list_checkpoints(self.out)
        kept = (f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written")
        raise DivergedError(f"training diverged: {what} (lr {r.lr:g}, grad_clip {r.grad_clip:g}, "
                            f"precision {self.precision}); stopped without saving them, {kept}; "
                            f"start again with a lower lr or gradient clipping")

    def _checkpoint(self, epoch: int, batch_in_epoch: int, step: int) -> None:
        self._check_finite(step, weights=True)
        if self.d.main:
            path = save_checkpoint(self._state(epoch, batch_in_epoch, step), self.out, step,
                                   self.recipe.keep_last)
            log.info("checkpoint %s", path)
        if self.d.world_size > 1:
            dist.barrier()

    def _validate(self, step: int, epoch: int) -> dict[str, float]:
        self._check_finite(step, weights=True)
        val = validate(self.model, self.val_ds, self.dev, self.recipe.val_batch, self.autocast, self.d)
        if self.d.main:
            self.runlog.log(step, epoch, {**val, "time/val_cpu_s": self._cpu_s()})
            log.info("step %d validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
            if self.best_psnr is None or val["val/psnr_sr"] > self.best_psnr:
                self.best_psnr, self.best_step = val["val/psnr_sr"], step
                save_model(self.model, self.out / "best.safetensors", self._meta(step, val))
        return val

    def _meta(self, step: int, val: dict[str, float] | None = None) -> dict[str, str]:
        meta = {"source": f"streamsr train, recipe {self.recipe.name!r}, step {step}",
                "trained": f"{self.data.name} ({self.recipe.model})", "step": str(step)}
        if val:
            meta["val_psnr_sr"] = f"{val['val/psnr_sr']:.4f}"
        return meta

    def run(self, saved: dict | None, init_mprnet, init) -> TrainResult:
        r, d, dev, out = self.recipe, self.d, self.dev, self.out
        _seed_everything(r.seed, r.deterministic)
        self.autocast = _precision(r, dev)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast]

        # data: the sample order is DistributedSampler's permutation of (seed, epoch); this rank's
        # batches are consecutive slices of its share, so resuming just skips consumed batches
        if r.data == "photos":  # sharp stills, a fresh camera shake for every sample
            shake = dict(patch=r.patch, seed=r.seed, max_shift=r.shake_max_shift,
                         camera_motion=r.shake_camera_motion, codec=r.shake_codec, crf=tuple(r.shake_crf))
            self.train_ds = ShakeDataset(self.data, r.train_split, length=r.samples_per_epoch,
                                         max_noise=r.shake_max_noise, augment=r.augment, **shake)
            self.val_ds = ShakeDataset(self.data, r.val_split, length=r.val_max or 64,
                                       max_noise=0.0, augment=False, **shake)
        else:
            self.train_ds = TripletDataset(self.data, r.train_split, r.patch, r.augment, r.seed)
            try:
                self.val_ds = TripletDataset(self.data, r.val_split, 0, False, r.seed, r.val_max)
            except InputError:
                raise ConfigError(f"{self.data} has no {r.val_split!r} triplets to validate on: "
                                  f"prepare with a held-out split (`--val-fraction`, GOPRO's test/) "
                                  f"or pick one with --set val_split=NAME") from None
        sampler = DistributedSampler(self.train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                     seed=r.seed, drop_last=True)
        steps_per_epoch = len(sampler) // r.batch
        if steps_per_epoch == 0:
            raise ConfigError(f"{len(self.train_ds)} training triplets are fewer than one batch of "
                              f"{r.batch} x {d.world_size} processes")
        total = r.epochs * steps_per_epoch
        if r.max_steps:
            total = min(total, r.max_steps)

        self.model = _build_model(r, init_mprnet, init).to(dev)
        net: nn.Module = self.model
        if d.world_size > 1:
            net = DistributedDataParallel(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=r.lr, betas=r.betas,
                                    weight_decay=r.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _cosine(r, total))
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.autocast == torch.float16)
        self.best_psnr: float | None = None
        self.best_step = 0
        # divergence watch (device scalars, read only at check points): first non-finite step,
        # current and longest run of consecutive non-finite steps
        self._bad_first, self._bad_run, self._bad_max = (
            torch.zeros((), dtype=torch.int64, device=dev) for _ in range(3))
        self.cpu_offset = 0.0
        epoch, start_batch, step = 0, 0, 0
        if saved is not None:
            try:
                self.model.load_state_dict(saved["model"])
                self.opt.load_state_dict(saved["optimizer"])
                self.sched.load_state_dict(saved["scheduler"])
                self.scaler.load_state_dict(saved["scaler"])
                _set_rng_state(saved["rng"])
                s = saved["sampler"]
                epoch, start_batch, step = int(s["epoch"]), int(s["batch_in_epoch"]), int(saved["step"])
                best = saved["best"]
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise WeightsError(f"the checkpoint of {out} is damaged or from another program "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
                                   ) from None
            if s["world"] != d.world_size and start_batch:
                log.warning("resuming with %d processes where the checkpoint had %d: the rest of "
                            "epoch %d is drawn in a different order", d.world_size, s["world"], epoch)
            self.best_psnr, self.best_step = best["psnr"], best["step"]
            self.cpu_offset = float(saved.get("cpu_s", 0.0)) - self._cpu_s()

        if d.main:
            try:
                out.mkdir(parents=True, exist_ok=True)
                (out / "recipe.toml").write_text(r.to_toml(), encoding="utf-8")
                self.runlog = RunLog(out, step if saved is not None else None)
            except OSError as exc:
                raise OutputError(f"cannot write to the run folder {out}: {exc.strerror}") from None
            log.info("training %s (%d parameters) on %s x%d, %d triplets, %d steps/epoch, %d steps",
                     r.model, count_parameters(self.model), dev, d.world_size, len(self.train_ds),
                     steps_per_epoch, total)
        stop = StopSignals(message="stopping after this step; saving a checkpoint (Ctrl-C again "
                                   "to abort)").__enter__()
        bar = tqdm(total=total, initial=step, unit="step", disable=not (self.progress and d.main),
                   dynamic_ncols=True)
        losses: list[tuple[int, float]] = []
        val: dict[str, float] = {}
        t_log, n_log = time.time(), 0
        try:
            while step < total:
                sampler.set_epoch(epoch)
                self.train_ds.set_epoch(epoch)
                order = list(sampler)[start_batch * r.batch: steps_per_epoch * r.batch]
                loader = DataLoader(self.train_ds, batch_size=r.batch, sampler=order,
                                    num_workers=r.num_workers, drop_last=True,
                                    pin_memory=dev.type == "cuda", worker_init_fn=_worker_init)
                batch_in_epoch = start_batch
                for lr_blur, lr, hr in loader:
                    lr_blur, lr, hr = (t.to(dev, non_blocking=True) for t in (lr_blur, lr, hr))
                    with _autocast(dev, self.autocast):
                        output = net(lr_blur)
                    terms = joint_loss(output, lr, hr, r.alpha, r.edge_weight)
                    self.opt.zero_grad(set_to_none=True)
                    self.scaler.scale(terms.total).backward()
                    self.scaler.unscale_(self.opt)
                    gnorm = (nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
                             if r.grad_clip > 0 else None)
                    self.scaler.step(self.opt)
                    self.scaler.update()
                    self.sched.step()
                    step += 1
                    batch_in_epoch += 1
                    n_log += 1
                    bar.update()
                    self._watch(step, terms.total, gnorm)
                    if self.on_step is not None:  # reading the loss waits for the GPU: only on demand
                        self.on_step(step, float(terms.total.detach()))

                    if step % r.log_every == 0 or step == total:
                        self._check_finite(step)
                        vals = torch.stack([terms.total, terms.sr, terms.char, terms.edge]).detach().double()
                        if d.world_size > 1:
                            vals = vals.to(dev)
                            dist.all_reduce(vals)
                            vals = vals / d.world_size
                        vals = vals.cpu().tolist()
                        losses.append((step, vals[0]))
                        bar.set_postfix(loss=f"{vals[0]:.4f}", epoch=epoch)
                        if d.main:
                            rate = n_log / max(1e-9, time.time() - t_log)
                            entry = {"train/loss": vals[0], "train/loss_sr": vals[1],
                                     "train/loss_char": vals[2], "train/loss_edge": vals[3],
                                     "train/lr": self.opt.param_groups[0]["lr"], "train/steps_per_s": rate,
                                     "time/cpu_s": self._cpu_s()}
                            if gnorm is not None:
                                entry["train/grad_norm"] = float(gnorm)
                            self.runlog.log(step, epoch, entry)
                        t_log, n_log = time.time(), 0

                    stopping = torch.tensor([stop.signum or 0], dtype=torch.int64)
                    if d.world_size > 1:
                        stopping = stopping.to(dev)
                        dist.all_reduce(stopping, op=dist.ReduceOp.MAX)
                    if int(stopping.item()):
                        self._checkpoint(epoch, batch_in_epoch, step)
                        raise Interrupted(f"training stopped at step {step}; checkpoint saved in "
                                          f"{out / 'checkpoints'}; continue with --resume",
                                          int(stopping.item()))
                    if r.val_every and step % r.val_every == 0 and step % steps_per_epoch:
                        val = self._validate(step, epoch)
                    if step % r.checkpoint_every == 0 and batch_in_epoch < steps_per_epoch and step < total:
                        self._checkpoint(epoch, batch_in_epoch, step)
                    if step >= total:
                        break
                if batch_in_epoch >= steps_per_epoch:  # a finished epoch: validate, checkpoint
                    epoch, start_batch = epoch + 1, 0
                    val = self._validate(step, epoch - 1)
                    self._checkpoint(epoch, 0, step)
                else:  # the step budget ended mid-epoch
                    start_batch = batch_in_epoch
                    val = self._validate(step, epoch)
                    self._checkpoint(epoch, batch_in_epoch, step)
        finally:
            stop.restore()
            bar.close()
            if d.main:
                self.runlog.close()

        model_path = out / "model.safetensors"
        if d.main:
            save_model(self.model, model_path, self._meta(step, val or None))
            log.info("final weights: %s (best validation PSNR %.3f dB at step %d)", model_path,
                     self.best_psnr if self.best_psnr is not None else float("nan"), self.best_step)
        best = out / "best.safetensors"
        return TrainResult(out, step, epoch, model_path, best if best.exists() else None,
                           self.best_psnr, val, losses)


__all__ = ["TrainResult", "list_checkpoints", "load_latest_checkpoint", "save_checkpoint",
           "train", "validate"]
