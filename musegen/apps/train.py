"""train.py's work: build everything from the Hydra config, fit, test, return the optimised metric."""
from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from musegen.checkpoint import CheckpointError, file_sha256, read_checkpoint, unfitting_weights
from musegen.io import atomic_path
from musegen.model_card import checkpoint_folders, now, training_facts, write_training_card
from musegen.sweep import job_devices

log = logging.getLogger(__name__)

#: The config tree's first branches, in this order (what a run is about); the other keys follow as composed.
TREE_FIRST = ("data", "model", "text", "trainer", "callbacks", "logger")
CONFIG_TREE_FILE = "config_tree.log"


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate text encoder, datamodule, module, callbacks, loggers and trainer from `cfg`.

    Everything is built from its config's `_target_`; the one value no config can know, the text
    encoder's embedding size, fills the model's `text_dim: ???`.
    """
    encoder = instantiate(cfg.text)
    datamodule = instantiate(cfg.data, text_encoder=encoder, _convert_="all")
    from_encoder = {"text_dim": encoder.dim} if OmegaConf.is_missing(cfg.model, "text_dim") else {}
    module = instantiate(cfg.model, **from_encoder)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    devices = job_devices(cfg.trainer.get("devices"), cfg.trainer.get("accelerator"), cfg.get("gpus_per_job"),
                          torch.cuda.device_count())
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, devices=devices)
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


def start_from(module: L.LightningModule, checkpoint: dict, path: str, lr: float, freeze: list[str]) -> None:
    """Fine-tuning: weights and normalisation from `checkpoint`, the fine-tuning learning rate, the
    named parts of the model frozen; the new run's checkpoints record where it started."""
    def named(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:   # as load_model names them
        return {k.removeprefix("model."): v for k, v in state.items()}

    differs = unfitting_weights(named(module.state_dict()), named(checkpoint["state_dict"]))
    if differs:
        raise CheckpointError(f"init_from {path}: its weights do not fit the model this run's config builds (it "
                              f"{differs}); fine-tuning keeps the checkpoint's architecture: give the run the model "
                              "settings it was trained with (its hyper-parameters, or the .hydra/config.yaml "
                              "beside it)")
    module.load_state_dict(checkpoint["state_dict"])
    module.hparams["lr"] = lr
    module.hparams["init_from"] = {"path": str(path), "sha256": file_sha256(path)}
    for name in freeze:
        try:
            part = module.model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"finetune.freeze: the model has no part {name!r} (e.g. backbone, "
                             f"conditioner.text_proj, head)") from None
        part.requires_grad_(False)
    log.info("initialised weights and normalisation from %s; lr %g%s", path, lr,
             f", frozen: {', '.join(freeze)}" if freeze else "")


@rank_zero_only
def print_config_tree(cfg: DictConfig, path: Path) -> None:
    """The resolved config as a tree, one branch per top-level key (TREE_FIRST first), on the console
    and in `path`: what a run used, at a glance, beside the three YAML files Hydra keeps in .hydra/."""
    tree = Tree("config", style="dim", guide_style="dim")
    for name in [*(k for k in TREE_FIRST if k in cfg), *(k for k in cfg if k not in TREE_FIRST)]:
        value = OmegaConf.select(cfg, name, throw_on_missing=False)
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(name, style="bold").add(Syntax(text.rstrip(), "yaml", word_wrap=True))
    Console().print(tree)
    # the file is plain text, no line wrapped (a path stays whole) and no padding
    buffer = io.StringIO()
    Console(file=buffer, width=10_000, color_system=None).print(tree)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()), encoding="utf-8")


@rank_zero_only
def write_model_cards(datamodule: L.LightningDataModule, module: L.LightningModule, trainer: L.Trainer,
                      run: Mapping[str, Any], logged: Mapping[str, Any]) -> None:
    """MODEL_CARD.md (musegen.model_card) beside the run's checkpoints, with the val/ and test/ metrics
    of `logged`; a run that writes no checkpoint has no model to describe."""
    folders = checkpoint_folders(trainer)
    if not folders:
        log.info("model card: this run writes no checkpoints, so no card")
        return
    metrics = {k: float(v) for k, v in logged.items() if k.startswith(("val/", "test/"))}
    facts = training_facts(datamodule, module, trainer, run, metrics)
    for folder in folders:
        write_training_card(folder, facts)


def train(cfg: DictConfig) -> float | None:
    """Fit (and test) the configured experiment; return `cfg.optimized_metric` from the last validation."""
    started, start = now(), time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    # checkpoints are read (and refused) before anything is built or written, so a bad one costs no work
    init = read_checkpoint(cfg.init_from) if cfg.get("init_from") else None
    resume = resume_path(cfg)
    if resume is not None:
        read_checkpoint(resume)
    print_config_tree(cfg, Path(cfg.paths.output_dir) / CONFIG_TREE_FILE)
    datamodule, module, trainer = build(cfg)
    if init is not None:
        start_from(module, init, cfg.init_from, cfg.finetune.lr, list(cfg.finetune.freeze))
    log_hyperparameters(trainer, cfg, cfg.optimized_metric)
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    fit_seconds = time.perf_counter() - fit_start
    metric = trainer.callback_metrics.get(cfg.optimized_metric)
    value = float(metric) if metric is not None else None
    logged = dict(trainer.callback_metrics)  # testing replaces the trainer's metrics by its own
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        logged.update(trainer.callback_metrics)
    if trainer.checkpoint_callback is not None:
        log.info("best checkpoint: %s", trainer.checkpoint_callback.best_model_path)
    log.info("%s = %s", cfg.optimized_metric, value)
    write_model_cards(datamodule, module, trainer, {
        "task_name": cfg.get("task_name"), "run_name": cfg.get("run_name"), "folder": str(cfg.paths.output_dir),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None,
        "seed": cfg.seed, "started": started, "finished": now(), "fit_seconds": round(fit_seconds, 3),
        "total_seconds": round(time.perf_counter() - start, 3), "resumed_from": resume,
        "init_from": cfg.get("init_from")}, logged)
    return value
