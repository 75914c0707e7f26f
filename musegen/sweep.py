"""Sweeps: a Hydra callback that records every trial and summarises the sweep, and per-job GPU pinning."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from musegen.io import write_json

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Writes `trial.json` into every job folder and `summary.json` (all trials, best) into the sweep folder."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hc = config.hydra
        if str(hc.mode) != "RunMode.MULTIRUN":
            return
        ok = job_return.status == JobStatus.COMPLETED
        write_json(Path(hc.runtime.output_dir) / "trial.json", {
            "job": hc.job.get("num"), "overrides": list(hc.overrides.task),
            "status": job_return.status.name,
            "value": _float(job_return.return_value) if ok else None,
            "error": None if ok else repr(job_return._return_value),
        })

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        trials = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/trial.json"))]
        trials.sort(key=lambda t: (t["job"] is None, t["job"]))
        direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="maximize"))
        scored = [t for t in trials if t["value"] is not None]
        pick = max if "max" in direction else min
        best = pick(scored, key=lambda t: t["value"]) if scored else None
        write_json(sweep_dir / "summary.json", {
            "metric": OmegaConf.select(config, "optimized_metric"), "direction": direction,
            "trials": trials, "best": best,
        })
        completed = sum(t["status"] == JobStatus.COMPLETED.name for t in trials)
        log.info("sweep summary: %d trials, %d completed%s", len(trials), completed,
                 f"; best {best['overrides']} -> {best['value']}" if best else "")


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def job_devices(devices: Any, accelerator: str, gpus_per_job: int | None, num_gpus: int) -> Any:
    """In a multirun with `gpus_per_job`, give job N its own GPUs: [N*g, ..., N*g+g-1] modulo the count,
    so parallel trials on one machine (joblib launcher) never share a device."""
    if not gpus_per_job or accelerator != "gpu" or num_gpus == 0:
        return devices
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is None or hc.mode is None or hc.mode.name != "MULTIRUN":
        return devices
    first = (int(hc.job.num) * gpus_per_job) % num_gpus
    return [(first + i) % num_gpus for i in range(gpus_per_job)]
