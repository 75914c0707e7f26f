"""Reading musegen checkpoints: as data (torch.load(weights_only=True), never arbitrary pickles), with
one clear CheckpointError for anything unusable. Lightning-free, so generation starts fast; writing
checkpoints during training is musegen.checkpoint_io's."""
from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from musegen.model.muse import MuseModel, architecture

#: Bumped whenever a checkpoint's tensors or hyper-parameters change meaning; older ones are refused.
CHECKPOINT_FORMAT = 3

#: How torch's restricted unpickler names the class or function a file asked it to load.
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
#: What else it refused (an instruction, a class), after its advice
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's tensors and plain data; refuse anything that would execute code."""
    ckpt = read_weights(path)
    _check_format(ckpt, Path(path))
    return ckpt


def read_weights(path: str | Path) -> Any:
    """torch.load(weights_only=True) of any file, every failure as one CheckpointError naming it and
    saying what is true of it: missing, a folder, unreadable (empty, truncated, not a PyTorch archive),
    or refused (it holds Python objects whose loading would run code)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: unreadable, empty file (0 bytes)")
    # torch.save has written zip archives since PyTorch 1.6; anything else would go to the legacy
    # unpickler, whose errors on arbitrary bytes (KeyError, IndexError) say nothing about the file
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path}: unreadable, not a PyTorch checkpoint archive "
                              "(truncated, corrupt or another kind of file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message opens with advice to load with weights_only=False, i.e. to run the file's code: never repeated
        code = _UNSAFE_GLOBAL.search(str(err))
        if code is not None:
            raise CheckpointError(
                f"checkpoint {path}: refused, it holds Python objects other than tensors and plain data "
                f"({code.group(1)}), which would run code when loaded; use a checkpoint written by musegen's train.py"
            ) from None
        detail = _UNPICKLER_DETAIL.search(str(err))
        raise CheckpointError(
            f"checkpoint {path}: refused, its data is not only tensors and plain data"
            f" ({detail.group(1) if detail else 'the restricted unpickler refused it'}); "
            "use a checkpoint written by musegen's train.py"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint {path}: unreadable, corrupt or truncated ({_first_line(err)})") from None
    return ckpt


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _check_format(ckpt: Any, path: Path) -> None:
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt or "format_version" not in hp:
        raise CheckpointError(f"checkpoint {path}: not a musegen checkpoint (no musegen hyper-parameters)")
    if hp["format_version"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: musegen checkpoint format {hp['format_version']}, "
            f"this musegen reads format {CHECKPOINT_FORMAT}"
        )


def load_model(path: str | Path) -> MuseModel:
    """The trained model from a checkpoint file alone, for inference, in eval mode (no Lightning)."""
    ckpt = read_checkpoint(path)
    try:
        model = MuseModel(**architecture(ckpt["hyper_parameters"]))
    except ValueError as err:   # hyper-parameters this musegen cannot build (another version's)
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    differs = unfitting_weights(model.state_dict(), weights)
    if differs:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model its hyper-parameters build in "
                              f"this musegen (it {differs}): it was written by another version; retrain or use "
                              "that version")
    model.load_state_dict(weights)
    return model.eval()


def unfitting_weights(own: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``weights`` from loading into a model whose state_dict is ``own`` ("lacks a, b; has
    unknown c; has other shapes for d", three names of each at most), or None where they fit."""
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [k for k, v in weights.items() if k in own and v.shape != own[k].shape]
    parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for what, keys in (("lacks", missing), ("has unknown", unexpected), ("has other shapes for", mismatched))
             if keys]
    return "; ".join(parts) or None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
