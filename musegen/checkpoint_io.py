"""Lightning's side of musegen checkpoints: written atomically (AtomicCheckpointIO) and carrying the
random state a resumed run needs (RandomState). Reading them is musegen.checkpoint's."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from musegen.io import atomic_path

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic for local files: a kill during a save never leaves a
    truncated `last.ckpt`.

    Lightning's own `_atomic_save` writes through an fsspec transaction whose temporary file lives in the
    system temp dir (`tempfile.mkstemp()`), then `shutil.move`s it onto the target. When $TMPDIR and the run
    folder are on different filesystems (local /tmp, shared /scratch: the usual cluster layout) that move is
    a copy straight onto the target, and a kill during the copy leaves a partial checkpoint; it is never
    fsync'd either. Here the temporary file is beside the target (same filesystem), fsync'd, renamed over it
    with os.replace, and the directory fsync'd. It is also streamed to disk instead of being built in memory
    first. Remote URLs (s3://, gs://, ...) keep Lightning's path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        fs = get_filesystem(path)
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        target = Path(fs._strip_protocol(str(path)))
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RandomState(L.Callback):
    """Saves the global random state in every checkpoint and restores it when training resumes, so a
    resumed run draws the same dropout, conditioning-dropout and context-dropout masks as an uninterrupted
    one. (Lightning restores weights, optimiser, scheduler and loop counters, not random generators; the
    training order needs nothing here: the datamodule's EpochShuffle and DDP's DistributedSampler derive it
    from seed + epoch.)

    Saved: torch's CPU generator, the current CUDA device's generator, numpy's and Python's global
    generators, as tensors and plain data so checkpoints still load with `weights_only=True`. The state is
    applied at the start of the first training epoch after a restore, just before that epoch's first
    random draw; what the restart did before (sanity validation) does not matter.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state(legacy=False)
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": _python_state(random.getstate()),
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        random.setstate(_python_state(state["python"]))
        np_state = state["numpy"]
        np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        log.info("resume: restored the random state saved with the checkpoint (epoch %d)", trainer.current_epoch)


def _python_state(state: tuple) -> tuple:
    """random.getstate() as nested tuples of ints (plain data for weights_only), and back."""
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)
