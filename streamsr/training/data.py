"""The training and validation data of a run, and the loader of each epoch.

The sample order is DistributedSampler's permutation of (seed, epoch); this rank's batches are
consecutive slices of its share, so resuming mid-epoch just skips the batches already consumed.
Every sample's crop and augmentation derive from (seed, epoch, index), so a resumed or
multi-process run sees the same data as an uninterrupted single one.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from streamsr.data.dataset import TripletDataset
from streamsr.data.shake_dataset import ShakeDataset
from streamsr.errors import ConfigError, InputError
from streamsr.runtime import DistEnv
from streamsr.training.recipe import Recipe


def datasets(recipe: Recipe, data: Path) -> tuple[Dataset, Dataset]:
    """(train, validation) datasets: prepared triplets, or photos shaken afresh per sample."""
    r = recipe
    if r.data == "photos":  # sharp stills, a fresh camera shake for every sample
        shake = dict(patch=r.patch, seed=r.seed, max_shift=r.shake_max_shift,
                     camera_motion=r.shake_camera_motion, codec=r.shake_codec, crf=tuple(r.shake_crf),
                     degradations=r.degradations)
        train = ShakeDataset(data, r.train_split, length=r.samples_per_epoch,
                             max_noise=r.shake_max_noise, augment=r.augment, **shake)
        val = ShakeDataset(data, r.val_split, length=r.val_max or 64, max_noise=0.0, augment=False,
                           **shake)
        return train, val
    train = TripletDataset(data, r.train_split, r.patch, r.augment, r.seed)
    try:
        val = TripletDataset(data, r.val_split, 0, False, r.seed, r.val_max)
    except InputError:
        raise ConfigError(f"{data} has no {r.val_split!r} triplets to validate on: "
                          f"prepare with a held-out split (`--val-fraction`, GOPRO's test/) "
                          f"or pick one with --set val_split=NAME") from None
    return train, val


def _worker_init(_: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class EpochLoader:
    """This rank's batches of each epoch, from any batch on (for a resumed epoch)."""

    dataset: Dataset
    recipe: Recipe
    env: DistEnv
    pin_memory: bool

    def __post_init__(self) -> None:
        r = self.recipe
        self.sampler = DistributedSampler(self.dataset, num_replicas=self.env.world_size,
                                          rank=self.env.rank, shuffle=True, seed=r.seed,
                                          drop_last=True)
        self.steps_per_epoch = len(self.sampler) // r.batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(self.dataset)} training triplets are fewer than one batch of "
                              f"{r.batch} x {self.env.world_size} processes")

    def epoch(self, epoch: int, start_batch: int) -> DataLoader:
        """The loader of `epoch`'s batches from `start_batch` to the end of the epoch."""
        r = self.recipe
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        order = list(self.sampler)[start_batch * r.batch: self.steps_per_epoch * r.batch]
        return DataLoader(self.dataset, batch_size=r.batch, sampler=order,
                          num_workers=r.num_workers, drop_last=True,
                          pin_memory=self.pin_memory, worker_init_fn=_worker_init)


__all__ = ["EpochLoader", "datasets"]
