"""train.py's work: build everything from the Hydra config, fit, test, return the optimised metric."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from musegen.checkpoint import read_checkpoint
from musegen.checkpoint_io import AtomicCheckpointIO, RandomState
from musegen.sweep import job_devices

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate text encoder, datamodule, module, callbacks, loggers and trainer from `cfg`."""
    encoder = instantiate(cfg.text)
    datamodule = instantiate(cfg.data, text_encoder=encoder, _convert_="all")
    # Built without hydra's recursion: the encoder's config (a `_target_` dict) must stay data.
    model_args = OmegaConf.to_container(cfg.model, resolve=True)
    module = get_class(model_args.pop("_target_"))(
        **model_args, text_dim=encoder.dim, features=OmegaConf.to_container(cfg.features, resolve=True),
        text_encoder=encoder.config(),
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks.append(RandomState())  # resumed runs draw the same random numbers as uninterrupted ones
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    devices = job_devices(cfg.trainer.get("devices"), cfg.trainer.get("accelerator"), cfg.get("gpus_per_job"),
                          torch.cuda.device_count())
    # a kill during a save never leaves a corrupt last.ckpt (unless trainer.plugins chooses otherwise)
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, devices=devices, **plugins)
    return datamodule, module, trainer


def resume_path(cfg: DictConfig) -> str | None:
    """`ckpt_path` when given; with resume=auto, the run folder's last.ckpt when it exists."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    if cfg.get("resume") == "auto":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
    elif cfg.get("resume") not in (None, "never"):
        raise ValueError(f"resume must be 'auto', 'never' or null, got {cfg.resume!r}")
    return None


@rank_zero_only
def log_hyperparameters(trainer: L.Trainer, cfg: DictConfig, metric: str) -> None:
    """Flattened config to every logger, with the optimised metric so TensorBoard's hparams view shows it."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    for lg in trainer.loggers:
        if hasattr(lg, "log_hyperparams"):
            try:
                lg.log_hyperparams(flat, metrics={metric: 0.0})
            except TypeError:
                lg.log_hyperparams(flat)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}/"))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def train(cfg: DictConfig) -> float | None:
    """Fit (and test) the configured experiment; return `cfg.optimized_metric` from the last validation."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    datamodule, module, trainer = build(cfg)
    if cfg.get("init_from"):
        ckpt = read_checkpoint(cfg.init_from)
        module.load_state_dict(ckpt["state_dict"])
        log.info("initialised weights and normalisation from %s", cfg.init_from)
    log_hyperparameters(trainer, cfg, cfg.optimized_metric)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg), weights_only=True)
    metric = trainer.callback_metrics.get(cfg.optimized_metric)
    value = float(metric) if metric is not None else None
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
    if trainer.checkpoint_callback is not None:
        log.info("best checkpoint: %s", trainer.checkpoint_callback.best_model_path)
    log.info("%s = %s", cfg.optimized_metric, value)
    return value
