"""The training loop, from a recipe and a data folder to weights.

`train()` joins the torchrun process group when there is one (streamsr.runtime), resumes or
starts a run folder, and hands over to `Training`, whose methods are the steps of a run: set up
data (training/data.py), model and optimiser (training/setup.py), resume (training/checkpoint.py),
then the step loop with logging (training/runlog.py), validation (training/validation.py) and
checkpoints. The paper's joint loss, mixed precision by the runtime's training policy, gradient
clipping, seeded and deterministic. Under torchrun: DistributedDataParallel (gloo on CPU, NCCL
on CUDA), a DistributedSampler, logging and saving on rank 0 only.

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

import logging
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from streamsr.errors import ConfigError, Interrupted, OutputError, StreamsrError, WeightsError
from streamsr.models import count_parameters
from streamsr.models.weights import save_model
from streamsr.runtime import (
    DistEnv,
    ProcessGroup,
    StopSignals,
    device_for,
    dist_env,
    resolve_device,
)
from streamsr.training.checkpoint import (
    CHECKPOINT_FORMAT,
    list_checkpoints,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from streamsr.training.data import EpochLoader, datasets
from streamsr.training.losses import LossTerms, joint_loss
from streamsr.training.recipe import Recipe, apply_overrides, recipe_from_dict
from streamsr.training.runlog import RunLog
from streamsr.training.setup import (
    autocast,
    autocast_dtype,
    build_model,
    build_optimisation,
    precision_name,
    seed_everything,
)
from streamsr.training.validation import validate

log = logging.getLogger(__name__)

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


# --- entry point ---------------------------------------------------------------------------------

def train(data: str | os.PathLike, out: str | os.PathLike, recipe: Recipe | None = None,
          overrides: Sequence[str] = (), resume: bool = False,
          init_mprnet: str | os.PathLike | None = None, init: str | os.PathLike | None = None,
          device: str | None = None, progress: bool = False,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train a model from a prepared triplet folder (or photos) into the run folder `out`.

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
        saved, saved_path = None, None
        if resume:
            saved, saved_path = load_latest_checkpoint(out)
            log.info("resuming from %s (step %d)", saved_path, saved["step"])
        elif list_checkpoints(out):
            raise OutputError(f"{out} already holds a training run; pass --resume to continue it "
                              f"or choose another --out")
        recipe = resolve_recipe(recipe, overrides, saved)
        if d.main:  # before any data is read: an unwritable --out fails in a second, not later
            _make_run_folder(out)
        if saved is not None and (init or init_mprnet):
            log.warning("--init/--init-mprnet ignored: resuming from %s", saved_path)
            init = init_mprnet = None
        run = Training(recipe, Path(data), out, d, dev, progress, on_step)
        run.build(init_mprnet, init)
        if saved is not None:
            run.resume(saved)
        return run.run()


def resolve_recipe(recipe: Recipe | None, overrides: Sequence[str], saved: dict | None) -> Recipe:
    """The recipe in effect: given (or the checkpoint's on resume) plus overrides, checked.

    A key the saved recipe does not have (added to Recipe after the run started) counts as its
    default, so runs started before a new key existed still resume.
    """
    base = recipe
    if base is None:
        if saved is None:
            raise ConfigError("no recipe: pass --recipe (or --resume a run that has checkpoints)")
        base = recipe_from_dict(saved["recipe"], "checkpoint recipe")
    final = apply_overrides(base, list(overrides))
    if saved is not None:
        before = {**Recipe().to_dict(), **saved["recipe"]}
        changed = sorted(k for k, v in final.to_dict().items()
                         if k not in RESUMABLE_CHANGES and before.get(k) != v)
        if changed:
            diffs = ", ".join(f"{k}: {before.get(k)!r} -> {final.to_dict()[k]!r}" for k in changed)
            raise ConfigError(f"the recipe differs from the run being resumed ({diffs}); resume "
                              f"with the same recipe or start a new --out")
    return final


def _make_run_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {out}: {exc.strerror}; pass --out "
                          f"a writable folder") from None
    if not os.access(out, os.W_OK):
        raise OutputError(f"the run folder {out} is not writable; pass --out a writable folder")


# --- one run -------------------------------------------------------------------------------------

class Training:
    """One training run's state. `build`, then `resume` (optional), then `run`."""

    def __init__(self, recipe: Recipe, data: Path, out: Path, d: DistEnv, dev: torch.device,
                 progress: bool, on_step: Callable[[int, float], None] | None) -> None:
        self.recipe, self.data, self.out, self.d, self.dev = recipe, data, out, d, dev
        self.progress, self.on_step = progress, on_step
        self.epoch, self.start_batch, self.step = 0, 0, 0  # where the loop (re)starts
        self.resumed = False
        self.best_psnr: float | None = None
        self.best_step = 0
        self.cpu_offset = 0.0
        self.losses: list[tuple[int, float]] = []
        self.val: dict[str, float] = {}

    # --- set-up

    def build(self, init_mprnet, init) -> None:
        """Seeds, precision, data, model and optimiser, in the order that fixes the RNG draws."""
        r, dev = self.recipe, self.dev
        seed_everything(r.seed, r.deterministic)
        self.autocast = autocast_dtype(r, dev)
        self.precision = precision_name(self.autocast)
        self.train_ds, self.val_ds = datasets(r, self.data)
        self.loader = EpochLoader(self.train_ds, r, self.d, pin_memory=dev.type == "cuda")
        self.steps_per_epoch = self.loader.steps_per_epoch
        self.total = r.epochs * self.steps_per_epoch
        if r.max_steps:
            self.total = min(self.total, r.max_steps)
        self.model = build_model(r, init_mprnet, init).to(dev)
        self.net: nn.Module = self.model
        if self.d.world_size > 1:
            self.net = DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.optim = build_optimisation(self.model, r, self.total, dev, self.autocast)
        # divergence watch (device scalars, read only at check points): first non-finite step,
        # current and longest run of consecutive non-finite steps
        self._bad_first, self._bad_run, self._bad_max = (
            torch.zeros((), dtype=torch.int64, device=dev) for _ in range(3))

    def resume(self, saved: dict) -> None:
        """Continue from a checkpoint: weights, optimiser, RNGs, position and best score."""
        try:
            self.model.load_state_dict(saved["model"])
            self.optim.load_state_dict(saved)
            set_rng_state(saved["rng"])
            s = saved["sampler"]
            self.epoch, self.start_batch = int(s["epoch"]), int(s["batch_in_epoch"])
            self.step = int(saved["step"])
            best = saved["best"]
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise WeightsError(f"the checkpoint of {self.out} is damaged or from another program "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
                               ) from None
        if s["world"] != self.d.world_size and self.start_batch:
            log.warning("resuming with %d processes where the checkpoint had %d: the rest of "
                        "epoch %d is drawn in a different order", self.d.world_size, s["world"],
                        self.epoch)
        self.best_psnr, self.best_step = best["psnr"], best["step"]
        self.cpu_offset = float(saved.get("cpu_s", 0.0)) - self._cpu_s()
        self.resumed = True

    def _open_run_folder(self) -> None:
        """Rank 0: the recipe in effect and the log (rows after the resumed step dropped)."""
        r, out = self.recipe, self.out
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "recipe.toml").write_text(r.to_toml(), encoding="utf-8")
            self.runlog = RunLog(out, self.step if self.resumed else None)
        except OSError as exc:
            raise OutputError(f"cannot write to the run folder {out}: {exc.strerror}") from None
        log.info("training %s (%d parameters) on %s x%d, %d triplets, %d steps/epoch, %d steps",
                 r.model, count_parameters(self.model), self.dev, self.d.world_size,
                 len(self.train_ds), self.steps_per_epoch, self.total)

    # --- the loop

    def run(self) -> TrainResult:
        """Epochs of steps until the step budget is spent, then the final weights."""
        if self.d.main:
            self._open_run_folder()
        message = "stopping after this step; saving a checkpoint (Ctrl-C again to abort)"
        with StopSignals(message=message) as stop:
            self.bar = tqdm(total=self.total, initial=self.step, unit="step",
                            disable=not (self.progress and self.d.main), dynamic_ncols=True)
            self.t_log, self.n_log = time.time(), 0
            try:
                while self.step < self.total:
                    self._epoch_and_after(stop)
            finally:
                self.bar.close()
                if self.d.main:
                    self.runlog.close()
        return self._finish()

    def _epoch_and_after(self, stop: StopSignals) -> None:
        """One epoch (or the rest of one), then its validation and checkpoint."""
        batch_in_epoch = self._epoch(stop)
        if batch_in_epoch >= self.steps_per_epoch:  # a finished epoch: validate, checkpoint
            self.epoch, self.start_batch = self.epoch + 1, 0
            self.val = self._validate(self.step, self.epoch - 1)
            self._checkpoint(self.epoch, 0, self.step)
        else:  # the step budget ended mid-epoch
            self.start_batch = batch_in_epoch
            self.val = self._validate(self.step, self.epoch)
            self._checkpoint(self.epoch, batch_in_epoch, self.step)

    def _epoch(self, stop: StopSignals) -> int:
        """This epoch's steps from `start_batch`; returns the batch position it stopped at."""
        r, epoch = self.recipe, self.epoch
        batch_in_epoch = self.start_batch
        for lr_blur, lr, hr in self.loader.epoch(epoch, self.start_batch):
            terms, gnorm = self._train_step(lr_blur, lr, hr)
            batch_in_epoch += 1
            step = self.step
            if step % r.log_every == 0 or step == self.total:
                self._log_step(terms, gnorm)
            self._stop_if_asked(stop, batch_in_epoch)
            if r.val_every and step % r.val_every == 0 and step % self.steps_per_epoch:
                self.val = self._validate(step, epoch)
            if (step % r.checkpoint_every == 0 and batch_in_epoch < self.steps_per_epoch
                    and step < self.total):
                self._checkpoint(epoch, batch_in_epoch, step)
            if step >= self.total:
                break
        return batch_in_epoch

    def _train_step(self, lr_blur: torch.Tensor, lr: torch.Tensor,
                    hr: torch.Tensor) -> tuple[LossTerms, torch.Tensor | None]:
        """One optimizer step on one batch: forward, joint loss, scaled backward, clip, step."""
        r, dev, o = self.recipe, self.dev, self.optim
        lr_blur, lr, hr = (t.to(dev, non_blocking=True) for t in (lr_blur, lr, hr))
        with autocast(dev, self.autocast):
            output = self.net(lr_blur)
        terms = joint_loss(output, lr, hr, r.alpha, r.edge_weight)
        o.opt.zero_grad(set_to_none=True)
        o.scaler.scale(terms.total).backward()
        o.scaler.unscale_(o.opt)
        gnorm = (nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
                 if r.grad_clip > 0 else None)
        o.scaler.step(o.opt)
        o.scaler.update()
        o.sched.step()
        self.step += 1
        self.n_log += 1
        self.bar.update()
        self._watch(self.step, terms.total, gnorm)
        if self.on_step is not None:  # reading the loss waits for the GPU: only on demand
            self.on_step(self.step, float(terms.total.detach()))
        return terms, gnorm

    def _log_step(self, terms: LossTerms, gnorm: torch.Tensor | None) -> None:
        """The losses averaged over ranks, to the progress bar and (rank 0) the run log."""
        step, d = self.step, self.d
        self._check_finite(step)
        vals = torch.stack([terms.total, terms.sr, terms.char, terms.edge]).detach().double()
        if d.world_size > 1:
            vals = vals.to(self.dev)
            dist.all_reduce(vals)
            vals = vals / d.world_size
        vals = vals.cpu().tolist()
        self.losses.append((step, vals[0]))
        self.bar.set_postfix(loss=f"{vals[0]:.4f}", epoch=self.epoch)
        if d.main:
            rate = self.n_log / max(1e-9, time.time() - self.t_log)
            entry = {"train/loss": vals[0], "train/loss_sr": vals[1],
                     "train/loss_char": vals[2], "train/loss_edge": vals[3],
                     "train/lr": self.optim.opt.param_groups[0]["lr"], "train/steps_per_s": rate,
                     "time/cpu_s": self._cpu_s()}
            if gnorm is not None:
                entry["train/grad_norm"] = float(gnorm)
            self.runlog.log(step, self.epoch, entry)
        self.t_log, self.n_log = time.time(), 0

    def _stop_if_asked(self, stop: StopSignals, batch_in_epoch: int) -> None:
        """A signal on any rank stops every rank after this step, with a checkpoint."""
        stopping = torch.tensor([stop.signum or 0], dtype=torch.int64)
        if self.d.world_size > 1:
            stopping = stopping.to(self.dev)
            dist.all_reduce(stopping, op=dist.ReduceOp.MAX)
        if int(stopping.item()):
            self._checkpoint(self.epoch, batch_in_epoch, self.step)
            raise Interrupted(f"training stopped at step {self.step}; checkpoint saved in "
                              f"{self.out / 'checkpoints'}; continue with --resume",
                              int(stopping.item()))

    def _finish(self) -> TrainResult:
        """Rank 0 saves the final weights; every rank returns where the outputs are."""
        out, step = self.out, self.step
        model_path = out / "model.safetensors"
        if self.d.main:
            save_model(self.model, model_path, self._meta(step, self.val or None))
            log.info("final weights: %s (best validation PSNR %.3f dB at step %d)", model_path,
                     self.best_psnr if self.best_psnr is not None else float("nan"), self.best_step)
        best = out / "best.safetensors"
        return TrainResult(out, step, self.epoch, model_path, best if best.exists() else None,
                           self.best_psnr, self.val, self.losses)

    # --- divergence, checkpoints, validation

    def _watch(self, step: int, loss: torch.Tensor, gnorm: torch.Tensor | None) -> None:
        """Record, on the device (no sync), whether this step's loss and gradients are finite."""
        ok = torch.isfinite(loss.detach().float())
        if gnorm is not None and not self.optim.scaler.is_enabled():
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
        limit = FP16_NONFINITE_STEPS if self.optim.scaler.is_enabled() else 0
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

    def _state(self, epoch: int, batch_in_epoch: int, step: int) -> dict:
        r = self.recipe
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "model_config": self.model.config.to_json(), **self.optim.state_dict(),
                "epoch": epoch, "step": step,
                "sampler": {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "batch": r.batch,
                            "world": self.d.world_size, "seed": r.seed},
                "rng": rng_state(), "recipe": r.to_dict(), "precision": self.precision,
                "best": {"psnr": self.best_psnr, "step": self.best_step},
                "cpu_s": self._cpu_s()}

    def _cpu_s(self) -> float:
        """CPU-seconds this run has used so far, across resumes (this process, its threads and
        the data workers it has reaped): the x axis of learning curves on a shared machine."""
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self.cpu_offset + time.process_time() + kids.ru_utime + kids.ru_stime

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


__all__ = ["DivergedError", "TrainResult", "Training", "list_checkpoints", "load_latest_checkpoint",
           "resolve_recipe", "save_checkpoint", "train", "validate"]
