"""Reading musegen checkpoints: as data (torch.load(weights_only=True), never arbitrary pickles), with
one clear CheckpointError for anything unusable. Lightning-free, so generation starts fast; writing
checkpoints during training is musegen.checkpoint_io's."""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from musegen.predictor import Predictor

#: Bumped whenever a checkpoint's tensors or hyper-parameters change meaning; older ones are refused.
CHECKPOINT_FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's tensors and plain data; refuse anything that would execute code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path}: refused, it holds objects other than tensors and plain data "
            f"(tampered or not a musegen checkpoint): {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint {path}: corrupt or truncated ({str(err).splitlines()[0]})") from None
    _check_format(ckpt, path)
    return ckpt


def _check_format(ckpt: Any, path: Path) -> None:
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt or "format_version" not in hp:
        raise CheckpointError(f"checkpoint {path}: not a musegen checkpoint (no musegen hyper-parameters)")
    if hp["format_version"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: musegen checkpoint format {hp['format_version']}, "
            f"this musegen reads format {CHECKPOINT_FORMAT}"
        )


def load_predictor(path: str | Path) -> Predictor:
    """The trained model from a checkpoint file alone, for inference, in eval mode."""
    ckpt = read_checkpoint(path)
    predictor = Predictor(ckpt["hyper_parameters"])
    predictor.load_state_dict(ckpt["state_dict"])
    return predictor.eval()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
