"""Weight files: safetensors with the model config in the metadata, and official MPRNet import.

Nothing here unpickles arbitrary objects: streamsr weights are safetensors (no code can run on
load) and official `.pth` checkpoints are read with `torch.load(weights_only=True)`.

The shared PReLU appears under many state_dict names but is one tensor; files store it once
(under its first name) and loading fills the aliases back in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from streamsr.errors import OutputError, WeightsError
from streamsr.models.configs import CONFIGS, PAPER, DeblurSRConfig, get_config
from streamsr.models.deblur_sr import DeblurSR
from streamsr.models.mprnet import MPRNet

log = logging.getLogger(__name__)

FORMAT = "streamsr-deblursr-v1"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
BUNDLED = {"lite": WEIGHTS_DIR / "lite.safetensors"}


def _aliases(model: nn.Module) -> dict[str, str]:
    """Map every state_dict key that shares storage with an earlier key to that earlier key."""
    first: dict[tuple[int, int], str] = {}
    alias: dict[str, str] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        ident = (t.data_ptr(), t.numel())
        if ident in first:
            alias[key] = first[ident]
        else:
            first[ident] = key
    return alias


def save_model(model: DeblurSR, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write `model` as safetensors, with its config in the metadata (atomic: temp + rename)."""
    alias = _aliases(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in alias}
    meta = {"format": FORMAT, "config": model.config.to_json(), **(metadata or {})}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # safetensors reports I/O errors as its own type
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _short(exc)
        raise OutputError(f"cannot write weights {path}: {why}") from None


def _regular_file(path: str | os.PathLike, what: str = "weights file") -> Path:
    """`path` if it is a regular file; a FIFO, device or folder is refused before it is opened
    (reading a FIFO would wait for a writer forever)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise WeightsError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise WeightsError(f"cannot read {what} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise WeightsError(f"{path} is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise WeightsError(f"{path} is not a regular file (a FIFO, socket or device); give a "
                           f"{what}")
    return path


def identify(path: str | os.PathLike) -> str | None:
    """What a file that is not safetensors is, from its first bytes (nothing is unpickled):
    'checkpoint' (a streamsr training checkpoint), 'torch' (a PyTorch .pth/.pt, zip or legacy
    pickle) or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:1] == b"\x80":  # a pickle protocol marker: a legacy (non-zip) torch.save
            return "torch"
        if head != b"PK\x03\x04" or not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pickles:
                return None
            info = z.getinfo(pickles[0])
            if info.file_size <= (64 << 20):
                # the checkpoint's format marker is a plain string inside the pickle
                if b"streamsr-checkpoint-v1" in z.read(info):
                    return "checkpoint"
            return "torch"
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return None


def _not_weights_hint(path: Path) -> str | None:
    """A one-line explanation for a PyTorch file given where streamsr weights are expected."""
    kind = identify(path)
    if kind == "checkpoint":
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        made = [str(run / n) for n in ("best.safetensors", "model.safetensors") if (run / n).is_file()]
        use = (f"use {' or '.join(made)}" if made else
               f"its run has no weights file yet: continue it with `streamsr train --resume "
               f"--data DATA --out {run}`, which writes {run / 'best.safetensors'} at each "
               f"validation and {run / 'model.safetensors'} at the end")
        return f"{path} is a streamsr training checkpoint (for `streamsr train --resume`), not a safetensors weights file; {use}"
    if kind == "torch":
        return (f"{path} is a PyTorch checkpoint (.pth), not a safetensors weights file; an official "
                f"MPRNet deblurring checkpoint converts with `streamsr import-mprnet {path} "
                f"OUT.safetensors` (a starting point for `streamsr train --init OUT.safetensors`: "
                f"its new x4 head is untrained)")
    return None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a streamsr weights file (config JSON, provenance)."""
    path = _regular_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        hint = _not_weights_hint(path)
        if hint:
            raise WeightsError(hint) from None
        raise WeightsError(f"{path} is not a safetensors weights file ({_short(exc)})") from None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _read_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise WeightsError(f"cannot read weights from {path} ({_short(exc)})") from None


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Refuse a state dict whose keys or shapes differ from the model's, naming the mismatches."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} unexpected (first: {', '.join(extra[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped (first: {'; '.join(shapes[:3])})")
    if problems:
        raise WeightsError(f"{source} does not match the model: " + "; ".join(problems))


def load_weights(model: DeblurSR, path: str | os.PathLike) -> DeblurSR:
    """Load a safetensors file into an existing model (strict: every key, every shape)."""
    state = _read_tensors(path)
    for key, target in _aliases(model).items():
        if key not in state and target in state:
            state[key] = state[target]
    check_state_dict(model, state, str(path))
    check_finite(state, str(path))
    model.load_state_dict(state, strict=True)
    return model


def check_finite(state: dict[str, Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinite values: they can only give garbage frames."""
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsError(f"{source} holds {bad} NaN or infinite value(s) (first in {key}): "
                               f"broken weights, e.g. from a training run that diverged")


# Metadata `trained` values of files that cannot make a picture yet (head never trained).
UNTRAINED = {"trunk-only": "an imported MPRNet trunk whose x4 head is untrained"}


def _build_for_file(config_json: str, path: Path) -> DeblurSR:
    """The model of a file's config, built only if the file can fill it (no hostile allocations)."""
    return DeblurSR(_check_file(config_json, path))


def _check_file(config_json: str, path: Path) -> DeblurSRConfig:
    """A file's config, once a meta-device model of it (shapes only) matches the file."""
    try:
        cfg = DeblurSRConfig.from_json(config_json)
        with torch.device("meta"):  # shapes only: nothing is allocated
            skeleton = DeblurSR(cfg)
    except Exception as exc:  # ConfigError, or a config the model code cannot build
        raise WeightsError(f"{path}: bad model config in its metadata ({_short(exc)})") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise WeightsError(f"cannot read weights from {path} ({_short(exc)})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    bad = [f"{k} {shapes[k]} != {expected[k]}" for k in expected if k in shapes and shapes[k] != expected[k]]
    if bad:
        raise WeightsError(f"{path} does not match the model of its config ({cfg.name!r}): "
                           f"{len(bad)} mis-shaped (first: {'; '.join(bad[:3])})")
    need = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    have = path.stat().st_size
    if need > 2 * have + (1 << 20):
        raise WeightsError(f"{path} does not match its own config: the {cfg.name!r} config needs "
                           f"{need / 1e6:.1f} MB of weights but the file holds {have / 1e6:.1f} MB")
    return cfg


def _check_usable(path: Path, meta: dict[str, str]) -> None:
    """Refuse a file that is not streamsr weights or whose weights cannot make a picture."""
    if meta.get("format") != FORMAT or "config" not in meta:
        raise WeightsError(f"{path} is not a streamsr weights file (no streamsr config in its "
                           f"metadata); official MPRNet checkpoints go through `streamsr import-mprnet`")
    why = UNTRAINED.get(meta.get("trained", ""))
    if why:
        raise WeightsError(f"{path} cannot make a picture: it holds {why} (trained: "
                           f"{meta['trained']}); fine-tune it first with `streamsr train --recipe "
                           f"train/paper_gopro.toml --data DATA --init {path}` and use the run's "
                           f"model.safetensors")


def weights_problem(path: str | os.PathLike) -> str | None:
    """Why `load_model(path)` would refuse a weights file whose metadata reads (None: usable).

    Checks what loading checks (untrained head, shapes, NaN/inf) without building the model.
    """
    path = Path(path)
    try:
        meta = read_metadata(path)
        _check_usable(path, meta)
        _check_file(meta["config"], path)
        check_finite(_read_tensors(path), str(path))
    except WeightsError as exc:
        return str(exc)
    return None


def load_model(model: str | os.PathLike = "lite", device: str | torch.device = "cpu") -> DeblurSR:
    """A ready model in eval mode: a bundled name (`lite`), or a path to a streamsr weights file.

    `paper` (and any config without trained weights) is refused: running untrained weights
    would produce noise that looks like a bug in the user's video.
    """
    name = str(model)
    if name in CONFIGS:
        path = BUNDLED.get(name)
        if path is None or not path.exists():
            raise WeightsError(
                f"no trained weights are bundled for the {name!r} model; get weights with "
                f"`streamsr train --recipe train/paper_gopro.toml ...` or convert the official MPRNet "
                f"GOPRO checkpoint with `streamsr import-mprnet model_deblurring.pth {name}.safetensors`"
                f" and fine-tune it, then pass --model PATH")
    else:
        path = Path(name)
        if not path.exists():
            raise WeightsError(f"no model named {name!r} and no such weights file "
                               f"(bundled names: {sorted(BUNDLED)})")
        if path.is_dir():
            raise WeightsError(f"{path} is a directory, not a weights file")
    meta = read_metadata(path)
    _check_usable(Path(path), meta)
    net = _build_for_file(meta["config"], Path(path))
    load_weights(net, path)
    return net.to(device).eval()


def model_config(model: str | os.PathLike) -> DeblurSRConfig:
    """The config of a named model or of a weights file, without loading tensors."""
    name = str(model)
    if name in CONFIGS:
        return get_config(name)
    if not Path(name).exists():
        raise WeightsError(f"no model named {name!r} and no such weights file "
                           f"(names: {sorted(CONFIGS)})")
    meta = read_metadata(name)
    if "config" not in meta:
        raise WeightsError(f"{name} has no streamsr config in its metadata")
    return DeblurSRConfig.from_json(meta["config"])


def read_mprnet_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of an official MPRNet checkpoint, unwrapped and without `module.`.

    Read with `weights_only=True`: a pickle that tries to build arbitrary objects is refused.
    """
    path = _regular_file(path, "checkpoint")
    if identify(path) == "checkpoint":
        raise WeightsError(f"{path} is a streamsr training checkpoint, not an official MPRNet "
                           f"checkpoint; continue its run with `streamsr train --resume`")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise WeightsError(f"refusing to load {path}: not a plain tensor checkpoint "
                           f"({_short(exc)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def import_mprnet(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None,
                  seed: int = 0) -> DeblurSR:
    """A paper-config joint model whose trunk comes from an official MPRNet checkpoint.

    The head (refinement CABs, fusion, reconstruction) is freshly initialised with `seed`: the
    file is a starting point for `streamsr train --init ...`, as in the paper's transfer learning.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise WeightsError(f"seed must be a whole number in [0, 2^32), got {seed!r}")
    state = read_mprnet_checkpoint(checkpoint)
    torch.manual_seed(seed)
    model = DeblurSR(PAPER)
    check_state_dict(model.trunk, state, str(checkpoint))
    model.trunk.load_state_dict(state, strict=True)
    if out is not None:
        save_model(model, out, {"source": f"MPRNet trunk from {Path(checkpoint).name}; head random (seed {seed})",
                                "trained": "trunk-only"})
    return model


def load_mprnet(checkpoint: str | os.PathLike) -> MPRNet:
    """The official MPRNet deblurring network alone (for the MPRNet + bicubic baseline)."""
    state = read_mprnet_checkpoint(checkpoint)
    net = MPRNet()
    check_state_dict(net, state, str(checkpoint))
    net.load_state_dict(state, strict=True)
    return net.eval()


def describe(meta: dict[str, str]) -> str:
    """One line about a weights file's provenance, for logs."""
    cfg = json.loads(meta.get("config", "{}"))
    return f"{cfg.get('name', '?')} model ({meta.get('source', 'unknown source')})"
