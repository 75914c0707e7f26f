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
from collections.abc import Mapping, Sequence
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

#: What the headline training metrics mean, shown under the metrics table when the run logged them.
METRIC_NOTES = {
    "skill": "`skill` is 1 - MSE(model) / MSE(repeat the last frame) on the next segment's MFCCs: above 0 beats "
             "persistence.",
    "lsd": "`lsd` is the log-spectral distance between the rendered and the original audio (lower is better).",
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


# -- rendering -----------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """A number as evaluation tables show it (3 decimals; n/a for a value that could not be measured)."""
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def metric_rows(entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[str], str, str]]:
    """Evaluation entries ({name, value, baselines: [[name, value], ...], chance, target}) as text cells:
    name, model value, one "name value" per baseline, chance, target. The evaluation table and the card
    show the same cells."""
    return [(e["name"], fmt(e["value"]), [f"{k} {fmt(v)}" for k, v in e["baselines"]],
             fmt(e["chance"]) if e["chance"] is not None else "", e["target"] or "") for e in entries]


def render(facts: Mapping[str, Any]) -> str:
    """The markdown card of `facts` (as training_facts returns them, with any evaluations merged)."""
    run, model = facts["run"], facts["model"]
    title = f"{run.get('task_name', 'musegen')}/{run.get('run_name', '')}".rstrip("/")
    parts = [f"# Model card: {title}", _summary(facts), _data_section(facts.get("data"), model["kind"]),
             _model_section(model, facts.get("text_encoder"), facts.get("data")),
             _training_section(facts), _metrics_section(facts["metrics"]), _evaluation_section(facts),
             _use_section(facts)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _summary(facts: Mapping[str, Any]) -> str:
    model, data, training = facts["model"], facts.get("data"), facts["training"]
    what = {"generator": "A musegen music generator, conditioned on text and reference audio",
            "vocoder": "A musegen vocoder (feature frames to waveform)"}.get(model["kind"], f"A {model['class']}")
    size = f"{model['parameters']:,} parameters"
    trained = f"trained for {_count(training['epochs'], 'epoch')} ({_count(training['steps'], 'step')})"
    on = f" on {_amount(data['clips'], data['seconds'])} of {data['source']['kind']} data" if data else ""
    return f"{what}: {size}, {trained}{on}."


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _amount(clips: int, seconds: float) -> str:
    return f"{clips:,} clips ({seconds:,.1f} s = {seconds / 3600:.2f} h)"


def _data_section(data: Mapping[str, Any] | None, kind: str) -> str:
    if data is None:
        return "## Data\n\nThe datamodule did not describe its data."
    src, feats = data["source"], data["features"]
    where = f"`{src['root']}`" if src["root"] else f"`{src['dataset']}` (downloaded)" if src["dataset"] else "n/a"
    files = data["files"]
    examples = {"generator": "training windows", "vocoder": "training crops"}.get(kind, "training examples")
    lines = [
        f"- **Source:** `{src['kind']}` at {where}" + (f": {src['description']}." if src["description"] else "."),
        f"- **Size:** {_amount(data['clips'], data['seconds'])}, {data['frames']:,} frames of "
        f"{1000 * data['frame_seconds']:.1f} ms; {files['usable']} of {files['total']} files usable; "
        f"{data['skipped_short_clips']} clips shorter than one training window left out.",
        f"- **Labels:** {', '.join(data['labels'])}.",
        f"- **Features per frame:** {feats['n_mfcc']} MFCC + {feats['n_chroma']} chroma "
        f"({feats['sample_rate']} Hz, hop {feats['hop_length']}, n_fft {feats['n_fft']}).",
        f"- **Splits** (grouped by source piece, seed {data['split_seed']}):",
    ]
    rows = [(s, f"{v['clips']:,}", f"{v['frames']:,}", f"{v['seconds']:,.1f}",
             f"{v['examples']:,}" if v["examples"] is not None else "-")
            for s, v in sorted(data["splits"].items(), key=lambda item: SPLITS.index(item[0]))]
    table = _table(("split", "clips", "frames", "seconds", examples), rows)
    return "## Data\n\n" + "\n".join(lines) + "\n\n" + table + f"\n\nFeature cache: `{data['cache']}`."


def _model_section(model: Mapping[str, Any], encoder: Mapping[str, Any] | None,
                   data: Mapping[str, Any] | None) -> str:
    frame = data["frame_seconds"] if data else None
    lines = [f"- **Class:** `{model['class']}`, {model['parameters']:,} parameters "
             f"({model['trainable_parameters']:,} trained)."]
    if model["kind"] == "generator":
        head = dict(model["head"])
        target = str(head.pop("_target_", "?")).rsplit(".", 1)[-1]
        lines += [
            f"- **Head:** {target} ({_settings(head)}).",
            f"- **Backbone:** bidirectional GRU ({_settings(model['backbone'])}); conditioning width "
            f"{model['cond_dim']}.",
            f"- **Window:** {_frames(model['context_frames'], frame)} of context, predicts "
            f"{_frames(model['segment_frames'], frame)} per step; chroma predicted: "
            f"{'yes' if model['predict_chroma'] else 'no'}.",
        ]
    elif model["kind"] == "vocoder":
        lines += [f"- **Network:** Vocos-style ConvNeXt ({_settings(model['net'])}).",
                  f"- **Training crops:** {_frames(model['crop_frames'], frame)}."]
    if encoder is not None:
        lines.append(f"- **Text encoder:** `{encoder['identity']}` ({encoder['dim']}-d embeddings; "
                     f"`{encoder['config'].get('_target_')}`).")
    elif model["kind"] == "vocoder":
        lines.append("- **Text encoder:** none: the vocoder is not conditioned on text.")
    return "## Model\n\n" + "\n".join(lines)


def _frames(n: int | None, frame_seconds: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n} frames" + (f" ({n * frame_seconds:.2f} s)" if frame_seconds else "")


def _settings(d: Mapping[str, Any]) -> str:
    """`key value, ...` in key order (the facts file sorts its keys), values as YAML spells them (null, true)."""
    return ", ".join(f"{k} {_settings(v) if isinstance(v, Mapping) else v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in sorted(d.items()))


def _training_section(facts: Mapping[str, Any]) -> str:
    run, t, ckpts = facts["run"], facts["training"], facts["checkpoints"]
    sw = t["software"]
    device = (f"{t['device']} ({t['device_name']}; {t['accelerator']}, {_count(t['devices'], 'device')} x "
              f"{_count(t['nodes'], 'node')})")
    command = " ".join(["python train.py", *(run.get("overrides") or [])])
    lines = [
        f"- **Run:** `{command}`, run folder `{run.get('folder', 'n/a')}`.",
        f"- **Hardware:** {device}, {t['cpu_cores']} CPU cores, {_count(t['torch_threads'], 'torch thread')}, "
        f"precision {t['precision']}.",
        f"- **Length:** {_count(t['epochs'], 'epoch')} of at most {t['max_epochs']}, "
        f"{_count(t['steps'], 'optimiser step')}.",
        f"- **Wall time:** {_duration(run.get('fit_seconds'))} fitting, {_duration(run.get('total_seconds'))} "
        f"in all (data, fitting, test); finished {run.get('finished', 'n/a')}.",
        f"- **Seed:** {run.get('seed')}; **software:** python {sw['python']}, torch {sw['torch']}, "
        f"lightning {sw['lightning']}, musegen {sw['musegen'] or 'n/a'}.",
    ]
    if run.get("resumed_from"):
        lines.append(f"- **Resumed** from `{run['resumed_from']}`: the wall time is this session's.")
    if run.get("init_from"):
        lines.append(f"- **Fine-tuned** from `{run['init_from']}`.")
    best = ckpts["best"]
    best_text = f"; best on {best['monitor']}: `{best['file']}` ({fmt(best['score'])})" if best else ""
    lines.append(f"- **Checkpoints:** {', '.join(f'`{f}`' for f in ckpts['files']) or 'none'}{best_text}.")
    return "## Training\n\n" + "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(float(seconds), 60)
    return f"{int(minutes)} min {secs:.0f} s" if minutes else f"{secs:.1f} s"


def _metrics_section(metrics: Mapping[str, float]) -> str:
    names = sorted({k.split("/", 1)[1] for k in metrics if k.startswith(("val/", "test/"))})
    if not names:
        return "## Metrics at the end of training\n\nNo validation or test metric was logged."
    rows = [(n, fmt(metrics.get(f"val/{n}")), fmt(metrics.get(f"test/{n}"))) for n in names]
    notes = "".join(f" {text}" for name, text in METRIC_NOTES.items() if name in names)
    return ("## Metrics at the end of training\n\nValidation after the last epoch; test on the test split "
            f"with the best checkpoint (n/a: not run).{notes}\n\n" + _table(("metric", "validation", "test"), rows))


def _evaluation_section(facts: Mapping[str, Any]) -> str:
    head = "## Evaluation (evaluate.py)\n\n"
    if facts["model"]["kind"] != "generator":
        return head + ("evaluate.py measures generator checkpoints; this model's quality is its validation "
                       "metrics above.")
    evaluations = facts.get("evaluations") or {}
    if not evaluations:
        best = facts["checkpoints"]["best"]
        name = best["file"] if best else "last.ckpt"
        ckpt = Path(facts["checkpoints"]["folder"] or ".") / name
        return head + f"Not evaluated yet: run `python evaluate.py ckpt={ckpt}`."
    out = [head.rstrip()]
    for name, e in sorted(evaluations.items()):
        data, s = e.get("data") or {}, e.get("settings") or {}
        out.append(
            f"### `{name}`\n\nEvaluated {e.get('evaluated_at', 'n/a')} on {e.get('device', 'n/a')} in "
            f"{_duration(e.get('seconds'))}: {data.get('evaluated_test_clips', 'n/a')} of "
            f"{data.get('test_clips', 'n/a')} test clips, {s.get('num_prompts', 'n/a')} prompts per label, "
            f"{s.get('seconds', 'n/a')} s each, seed {s.get('seed', 'n/a')}; checkpoint sha256 "
            f"`{str(e.get('checkpoint_sha256', ''))[:16]}`; every figure in `{e.get('metrics_json', 'n/a')}`. "
            "Baselines are measured in the same run; definitions in docs/DESIGN.md.\n\n"
            + _table(("metric", "model", "baselines (same run)", "chance", "target"),
                     [(n, v, "<br>".join(b), c, t) for n, v, b, c, t in metric_rows(e["metrics"])]))
    return "\n\n".join(out)


def _use_section(facts: Mapping[str, Any]) -> str:
    model, data, training = facts["model"], facts.get("data"), facts["training"]
    feats = data["features"] if data else {"n_mfcc": "?", "n_chroma": "?"}
    trained_on = (f"{_amount(data['clips'], data['seconds'])} of {data['source']['kind']} data "
                  f"(labels: {', '.join(data['labels'])})" if data else "the data named above")
    size = f"a small model ({model['parameters']:,} parameters, {_count(training['epochs'], 'epoch')})"
    if model["kind"] == "vocoder":
        use = ("Rendering musegen feature frames as audio with the timbres of its training data "
               "(`generate.py vocoder=...`, `python -m musegen.resynth vocoder=...`), and research on "
               "feature-to-audio synthesis.")
        limits = [
            f"It is {size} trained on {trained_on} only: other instruments and recordings come out in the "
            "timbres it learned.",
            f"Its input is {feats['n_mfcc']} MFCC + {feats['n_chroma']} chroma per frame: detail those "
            "features do not keep (fine timbre, stereo, exact pitch) cannot be recovered.",
            "No adversarial training: expect buzzy or phasey audio, more so on sounds unlike the training data.",
        ]
        not_for = "a general-purpose or speech vocoder, audio restoration, or production audio"
    else:
        use = ("Research and teaching: experiments with text- and audio-conditioned music generation, "
               "sampling (guidance, temperature) and evaluation methods on the data named above, and a "
               "starting point for fine-tuning on one's own audio (`train.py init_from=...`).")
        limits = [
            f"It is {size} trained on {trained_on}: it knows those sounds only, and a prompt naming anything "
            "else is mapped by the text encoder onto the nearest of them.",
            f"It models {feats['n_mfcc']} MFCC + {feats['n_chroma']} chroma per frame, not the waveform: the "
            "audio is resynthesised from those features, so timbre detail is limited and the output is a "
            "sketch, not production audio. Pitch is 12 pitch classes: octave and polyphony are approximate.",
            "No singing or words: lyrics condition it only through their text embedding.",
        ]
        if model["kind"] == "generator" and data:
            limits.append(f"It sees {_frames(model['context_frames'], data['frame_seconds'])} of context: "
                          "structure longer than that (repetition, form) is not modelled.")
        not_for = ("production or commercial music, imitating a particular artist or recording, speech or "
                   "singing, or any decision about people")
    limits.append("Its metrics are measured on held-out clips of the same data; they say nothing about other music.")
    if data and data["source"]["kind"] == "DemoSource":
        limits.append("The demo set is synthetic (soundfont renderings of scores), not recorded performances.")
    limits.append("Outputs inherit the terms of the training data: check its licence before publishing them.")
    return ("## Intended use\n\n" + use + f"\n\nNot for: {not_for}.\n\n## Limitations\n\n"
            + "\n".join(f"- {line}" for line in limits))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def row(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(header), row(["---"] * len(header)), *map(row, rows)])
