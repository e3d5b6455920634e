"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamsr.models import TINY, DeblurSR
from streamsr.models.weights import save_model


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A `tiny`-config weights file (seed 0), for runs that load a model by path."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_model(DeblurSR(TINY), path)
    return path
