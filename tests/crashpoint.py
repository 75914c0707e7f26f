"""A test-only Lightning callback that parks training at a chosen batch so a test can SIGKILL it there.

Used by tests/test_sweeps.py through Hydra overrides (`+callbacks.crash._target_=crashpoint.CrashPoint`),
with tests/ on PYTHONPATH. At (epoch, batch) it writes `marker` and sleeps; the test kills the process.
When `marker` already exists (the restarted run), it does nothing, so the same command can be run again.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class CrashPoint(L.Callback):
    def __init__(self, marker: str, epoch: int, batch: int, wait_s: float = 120.0) -> None:
        self.marker, self.epoch, self.batch, self.wait_s = Path(marker), epoch, batch, wait_s
        self.armed = not self.marker.exists()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.armed and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self.marker.write_text(f"epoch {trainer.current_epoch} batch {batch_idx} step {trainer.global_step}\n")
            time.sleep(self.wait_s)  # killed here
