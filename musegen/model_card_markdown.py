"""A model card's markdown, rendered from its facts (musegen.model_card gathers and writes them).

Text only: evaluate.py's table shares its cells (metric_rows).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from musegen.data.datamodule import SPLITS

#: What the headline training metrics mean, shown under the metrics table when the run logged them.
METRIC_NOTES = {
    "skill": "`skill` is 1 - MSE(model) / MSE(repeat the last frame) on the next segment's MFCCs: above 0 beats "
             "persistence.",
    "lsd": "`lsd` is the log-spectral distance between the rendered and the original audio (lower is better).",
}


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
            f"{s.get('seconds', 'n/a')} s each, seed {s.get('seed', 'n/a')}; {_audio_path(e.get('vocoder'))}; "
            "checkpoint sha256 "
            f"`{str(e.get('checkpoint_sha256', ''))[:16]}`; every figure in `{e.get('metrics_json', 'n/a')}`. "
            "Baselines are measured in the same run; definitions in docs/DESIGN.md.\n\n"
            + _table(("metric", "model", "baselines (same run)", "chance", "target"),
                     [(n, v, "<br>".join(b), c, t) for n, v, b, c, t in metric_rows(e["metrics"])]))
    return "\n\n".join(out)


def _audio_path(vocoder: Mapping[str, Any] | None) -> str:
    """How an evaluation heard the generated audio: the vocoder it was given, or the analytic synthesis."""
    if not vocoder:
        return "audio through the analytic synthesis"
    return f"audio through the vocoder `{vocoder['path']}` (sha256 `{str(vocoder['sha256'])[:16]}`)"


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
