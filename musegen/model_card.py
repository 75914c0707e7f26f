"""The model card beside a run's checkpoints: MODEL_CARD.md, rendered from the facts in model_card.json.

A checkpoint shared without its story is hard to trust, so every training run describes what it made:
the data (source, size, splits), the model and its text encoder, the hardware and time it took, its
final validation/test metrics, what it is for and what it cannot do. train.py gathers those facts at
the end of a run; evaluate.py merges an evaluation of one checkpoint into them (the same numbers as
its metrics.json, with their baselines). Both then render the card from the facts: the markdown is
only ever written, never parsed, so the two applications cannot disagree about what a card says.
"""
from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from musegen.checkpoint import file_sha256
from musegen.data.datamodule import SPLITS, MuseDataModule
from musegen.io import atomic_path, finite_or_none, write_json
from musegen.model.muse import MuseModel
from musegen.model_card_markdown import render
from musegen.vocoder.network import Vocoder

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
FACTS_FILE = "model_card.json"
#: What each data source is, in words a reader of the card needs (keyed by the source's class name).
SOURCES = {
    "DemoSource": "musegen's demo set: compositions from music21's bundled corpus (public-domain scores) "
                  "rendered by FluidSynth with General MIDI soundfonts; synthetic audio, not recordings",
    "FolderSource": "a folder of the user's audio files, captioned from metadata.csv or file names",
    "KaggleSource": "the Musical Instruments Sound Dataset (Kaggle): guitar, drum, violin and piano recordings",
}

def now() -> str:
    """The current UTC time, to the second, as the card records times."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- facts ---------------------------------------------------------------------------------------
def checkpoint_folders(trainer: L.Trainer) -> list[Path]:
    """Where the run's ModelCheckpoint callbacks write: each gets the card (none without checkpoints)."""
    return sorted({Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
                   if isinstance(cb, ModelCheckpoint) and cb.dirpath})


def training_facts(datamodule: L.LightningDataModule, module: L.LightningModule, trainer: L.Trainer,
                   run: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, Any]:
    """Everything the card says about a finished training run, as plain data.

    ``run`` is what only the application knows (task and run names, seed, wall times, where the run
    started from); ``metrics`` the val/ and test/ values it logged last. Works for any module: the
    generator (MuseModule) and the vocoder are described in full, anything else by class and size.
    """
    clips = datamodule if isinstance(datamodule, MuseDataModule) else getattr(datamodule, "clips", None)
    clips = clips if isinstance(clips, MuseDataModule) and clips.cache is not None else None
    model = _model_facts(module, datamodule)
    return finite_or_none({
        "run": dict(run),
        "data": _data_facts(clips, datamodule) if clips is not None else None,
        "model": model,
        "text_encoder": ({"identity": clips.text_encoder.identity, "dim": int(clips.text_encoder.dim),
                          "config": module.model.text_encoder}
                         if model["kind"] == "generator" and clips is not None else None),
        "training": _training_facts(trainer),
        "metrics": {k: float(v) for k, v in sorted(metrics.items())},
        "checkpoints": _checkpoint_facts(trainer),
        "evaluations": {},
    })


def _data_facts(clips: MuseDataModule, datamodule: L.LightningDataModule) -> dict[str, Any]:
    cache, features = clips.cache, clips.feature_config
    examples = getattr(datamodule, "datasets", {})
    splits = {}
    for split in SPLITS:
        ids = clips.split_clips.get(split, [])
        frames = int(cache.lengths[ids].sum()) if ids else 0
        splits[split] = {"clips": len(ids), "frames": frames, "seconds": round(frames * features.frame_seconds, 3),
                         "examples": len(examples[split]) if split in examples else None}
    source = clips.source
    frames = sum(s["frames"] for s in splits.values())
    return {
        "source": {"kind": type(source).__name__, "root": _str_or_none(getattr(source, "root", None)),
                   "dataset": getattr(source, "dataset", None), "description": SOURCES.get(type(source).__name__)},
        "cache": str(cache.path),
        "files": {"usable": cache.report.get("usable"), "total": cache.report.get("total")},
        "clips": sum(s["clips"] for s in splits.values()),
        "skipped_short_clips": len(clips.skipped),
        "frames": frames,
        "seconds": round(frames * features.frame_seconds, 3),
        "labels": list(clips.labels),
        "features": features.to_dict(),
        "frame_seconds": features.frame_seconds,
        "splits": splits,
        "split_seed": clips.hparams.seed,
    }


def _model_facts(module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, Any]:
    params = list(module.parameters())
    facts: dict[str, Any] = {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
    }
    model = getattr(module, "model", None)
    if isinstance(model, MuseModel):
        keep = ("head", "backbone", "cond_dim", "context_frames", "segment_frames", "predict_chroma")
        facts.update(kind="generator", **{k: model.config[k] for k in keep})
    elif isinstance(getattr(module, "vocoder", None), Vocoder):
        facts.update(kind="vocoder", net=dict(module.hparams["net"]),
                     crop_frames=getattr(datamodule, "crop_frames", None))
    else:
        facts["kind"] = "other"
    return facts


def _training_facts(trainer: L.Trainer) -> dict[str, Any]:
    device = trainer.strategy.root_device
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "precision": str(trainer.precision),
        "epochs": trainer.current_epoch,
        "max_epochs": trainer.max_epochs,
        "steps": trainer.global_step,
        "software": {"python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__,
                     "musegen": _version("musegen")},
    }


def _checkpoint_facts(trainer: L.Trainer) -> dict[str, Any]:
    """The best checkpoint on the monitored metric; the folder and its files are filled in per card."""
    monitored = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor),
                     None)
    best = None
    if monitored is not None and monitored.best_model_path:
        score = monitored.best_model_score
        best = {"file": Path(monitored.best_model_path).name, "monitor": monitored.monitor,
                "score": float(score) if score is not None else None}
    return {"folder": None, "files": [], "best": best}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


# -- writing -------------------------------------------------------------------------------------
def write_training_card(folder: str | Path, facts: Mapping[str, Any]) -> Path:
    """Write a finished run's facts and card into its checkpoint folder; return the card's path.

    Evaluations recorded there before (a run resumed or repeated in the same folder) are kept only
    for checkpoints whose contents are unchanged: a rewritten last.ckpt is not the model evaluated.
    """
    folder = Path(folder)
    earlier = _read_facts(folder)
    kept = {name: e for name, e in (earlier or {}).get("evaluations", {}).items()
            if (folder / name).is_file() and file_sha256(folder / name) == e.get("checkpoint_sha256")}
    checkpoints = {**facts["checkpoints"], "folder": str(folder.resolve()),
                   "files": sorted(p.name for p in folder.glob("*.ckpt"))}
    return _write(folder, {**facts, "checkpoints": checkpoints, "evaluations": kept})


def record_evaluation(ckpt: str | Path, evaluation: Mapping[str, Any]) -> Path | None:
    """Merge an evaluation of `ckpt` into the facts beside it and render the card again; return the
    card's path, or None when `ckpt` has no card (it was not written by a train.py run)."""
    ckpt = Path(ckpt).resolve()
    facts = _read_facts(ckpt.parent)
    if facts is None:
        log.info("model card: no %s beside %s, so no card to update", FACTS_FILE, ckpt)
        return None
    facts["evaluations"] = {**facts.get("evaluations", {}), ckpt.name: finite_or_none(dict(evaluation))}
    return _write(ckpt.parent, facts)


def _read_facts(folder: Path) -> dict[str, Any] | None:
    path = folder / FACTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write(folder: Path, facts: Mapping[str, Any]) -> Path:
    write_json(folder / FACTS_FILE, facts)
    card = folder / CARD_FILE
    with atomic_path(card) as tmp:
        tmp.write_text(render(facts), encoding="utf-8")
    log.info("model card: %s", card)
    return card
