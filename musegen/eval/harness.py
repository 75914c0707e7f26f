"""The generation harness: runs a model (through musegen.generation.Generator) and the written-audio
path (musegen.export.synthesize) over clips of the feature cache, for the metrics that judge what
a listener would hear. Pure maths lives in musegen.eval.metrics, baselines in musegen.eval.baselines.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musegen.audio import Synthesizer, write_audio
from musegen.eval.metrics import pitch_class_profile, profile_correlation, skill
from musegen.eval.prompts import prompts_for
from musegen.export import ExportSettings, synthesize
from musegen.features import FeatureConfig, extract, load_audio
from musegen.generation import Generator
from musegen.instruments import find_instrument, register_for
from musegen.midi import Note, frames_to_notes
from musegen.model.muse import MuseModel


@torch.inference_mode()
def next_segment_skill(model: MuseModel, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Model vs persistence MSE on next-segment MFCC in normalised units, over every test window.

    `batches`: window batches (context, context_mask, target, text, reference), e.g. a test
    dataloader. The prediction is the head's point prediction (musegen.model.heads.Head.mean).
    Normalised units weight every MFCC equally, as the training loss does; persistence repeats the
    last real context frame.
    """
    m, dev = int(model.n_mfcc), model.normaliser.mean.device
    was_training = model.training
    model.eval()  # dropout off: the number must not depend on the call
    model_se = persist_se = 0.0
    count = 0
    try:
        for batch in batches:
            b = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            cond = model.condition(b["text"], b["reference"])
            pred = model.mean(b["context"], b["context_mask"], cond)[..., :m]
            target = model.target(b["target"])[..., :m]
            persist = model.persistence(b["context"], b["context_mask"])[..., :m]
            model_se += float(((pred - target) ** 2).double().sum())
            persist_se += float(((persist - target) ** 2).double().sum())
            count += target.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("next_segment_skill: no test windows (is the test split empty?)")
    mse, pmse = model_se / count, persist_se / count
    return {"skill": float(skill(mse, pmse)), "mse": mse, "persistence_mse": pmse, "values": count}


# -- generated samples ---------------------------------------------------------------------------
@dataclass
class Sample:
    """One generated sample: what the model meant (frames) and what the written audio holds."""
    frames: np.ndarray             # [T, 32] generated raw features
    audio: np.ndarray              # finished mono audio, as written
    extracted: np.ndarray          # [T', 32] features re-extracted from `audio`
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AudioPath:
    """The written-audio path generate.py takes (its synthesis and export settings): frames -> the
    audio a listener hears -> features re-extracted from it."""

    synth: Synthesizer
    export: ExportSettings

    def render(self, frames: np.ndarray, seconds: float, register: int, path: str | Path | None = None,
               label: str | None = None) -> Sample:
        """With `path` the audio is written as WAV and read back, so the features come from the file
        itself; without, from the identical in-memory signal."""
        features = self.synth.features
        samples = int(round(seconds * features.sample_rate))
        y = synthesize(frames, features, self.synth, samples, self.export, register)
        if path is not None:
            wav = write_audio(y, Path(path), features.sample_rate, ("wav",))[0]
            y = load_audio(wav, features.sample_rate)
        return Sample(frames=np.asarray(frames), audio=y, extracted=extract(y, features), label=label)


# -- melody adherence ----------------------------------------------------------------------------
@dataclass
class MelodyAdherence:
    value: float                   # continuation vs its own reference
    random_reference: float        # continuation vs a random other clip
    unconditioned: float           # generation without reference vs the reference
    samples: list[Sample]          # the continuations (reused by pitch_fidelity and fad)


def melody_adherence(
    generator: Generator, clip_paths: Sequence[str], reference_chroma: Sequence[np.ndarray],
    labels: Sequence[str | None], audio_path: AudioPath, seconds: float, sampling: Mapping[str, Any] | None = None,
    seed: int = 0, out_dir: str | Path | None = None,
) -> MelodyAdherence:
    """Mean profile correlation of audio continuations with their references, beside two baselines.

    Each clip is continued (Generator with audio=clip, no prompt, so only the audio conditions),
    synthesised, re-extracted and its pitch-class profile correlated with the clip's. Baselines in
    the same run: the same continuation against a random *other* clip (what key agreement by
    chance looks like) and an unconditioned generation against the clip (what the model does
    without hearing the reference). ``sampling``: generate()'s settings besides guidance (None: the
    checkpoint's defaults).
    """
    n = len(clip_paths)
    if n < 2 or len(reference_chroma) != n or len(labels) != n:
        raise ValueError(f"melody_adherence needs >= 2 clips with one chroma and label each, got {n}")
    refs = [pitch_class_profile(c) for c in reference_chroma]
    others = _derangement(n, seed)
    m = generator.features.n_mfcc
    own, rand, uncond, samples = [], [], [], []
    for i, path in enumerate(clip_paths):
        register = register_for(labels[i])
        for kind, audio in (("continuation", path), ("unconditioned", None)):
            frames = generator.generate(audio=audio, duration=seconds, seed=seed + i, **(sampling or {})).frames[0]
            where = Path(out_dir) / f"{kind}-{i:03d}" if out_dir else None
            s = audio_path.render(frames, seconds, register, path=where, label=labels[i])
            profile = pitch_class_profile(s.extracted[:, m:])
            if kind == "continuation":
                own.append(profile_correlation(profile, refs[i]))
                rand.append(profile_correlation(profile, refs[others[i]]))
                samples.append(s)
            else:
                uncond.append(profile_correlation(profile, refs[i]))
    return MelodyAdherence(float(np.mean(own)), float(np.mean(rand)), float(np.mean(uncond)), samples)


def _derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation with no fixed point: each clip gets a random *other* clip."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if n < 2 or not np.any(perm == np.arange(n)):
            return [int(p) for p in perm]


def musegen_notes(frames: np.ndarray, features: FeatureConfig, label: str | None) -> list[Note]:
    """musegen's own transcription (midi.frames_to_notes) in the label instrument's register and range."""

    inst = find_instrument(label)
    if inst is None:
        return frames_to_notes(frames, features)
    return frames_to_notes(frames, features, register=inst.register, pitch_range=(inst.low, inst.high))


def prompt_samples(
    generator: Generator, labels: Sequence[str], guidance: float, n_per_label: int, duration: float,
    audio_path: AudioPath, sampling: Mapping[str, Any] | None = None, seed: int = 0, out_dir: str | Path | None = None,
) -> list[Sample]:
    """For each label, `n_per_label` samples from a neutral start, prompted with held-out wordings
    (musegen.eval.prompts: no training caption uses them).

    Each sample is synthesised as generate.py does (``audio_path``) in the named instrument's
    register, and its features re-extracted from that audio. ``sampling``: generate()'s settings
    besides guidance (None: the checkpoint's defaults). Every sample draws from its own random
    stream (seeds ``seed``, ``seed + 1``, ... in order), so no two samples share their sampling noise;
    calls with the same labels and seed reuse the streams, which pairs samples across guidances.
    """
    out = []
    for i, label in enumerate(labels):
        wordings = prompts_for(label)
        name = label.replace("_", "-").lower()
        prompts = [wordings[j % len(wordings)] for j in range(n_per_label)]
        seeds = [seed + i * n_per_label + j for j in range(n_per_label)]
        result = generator.generate(prompt=prompts, duration=duration, guidance=guidance, seed=seeds,
                                    **(sampling or {}))
        for j, (prompt, item_seed, frames) in enumerate(zip(prompts, seeds, result.frames)):
            where = Path(out_dir) / f"g{guidance:g}-{name}-{j}" if out_dir else None
            s = audio_path.render(frames, duration, register_for(label), path=where, label=label)
            s.meta.update(prompt=prompt, guidance=guidance, seed=item_seed)
            out.append(s)
    return out
