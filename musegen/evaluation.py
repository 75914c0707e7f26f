"""Quality metrics: one definition each, used by the training module, tests, bench/ and evaluate.py.

The metrics (docs/DESIGN.md, "Metrics") and why each is built the way it is:

- ``skill``: next-segment MFCC error against persistence, so 0 means "learned nothing beyond
  repeating the last frame" whatever the data's scale.
- ``prompt_adherence``: does a prompt naming an instrument produce audio that a fixed classifier,
  trained on real clips only, hears as that instrument? Features are re-extracted from the written
  audio, so the synthesis is judged together with the model.
- ``melody_adherence``: does a continuation stay in its reference's key? Pearson correlation of
  time-averaged chroma (pitch-class profiles); frame-wise chroma cosine is not used because a flat
  chroma scores higher than a random real clip on it.
- ``pitch_fidelity``: does the written audio sound the pitch classes the model generated?
- ``fad``: Frechet distance between Gaussian fits of pooled-feature embeddings.
- ``note_f1``: mir_eval note F1 of the MIDI transcription against ground-truth MIDI.
- ``rtf``: seconds of audio per wall-clock second.

Every function here is pure (arrays in, numbers out) except the ones that take a Generator; the
last section (``Evaluation``, ``evaluate_checkpoint``) is evaluate.py's work and computes every
baseline in the same run as the model's number. Heavy imports (generation, export, scikit-learn, mir_eval) are local to the
functions that need them: musegen.module imports ``skill`` from here.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from musegen.instruments import INSTRUMENTS, Instrument, find_instrument

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only (no cycles at runtime)
    from musegen.audio import Synthesizer
    from musegen.data.datamodule import MuseDataModule
    from musegen.features import FeatureConfig
    from musegen.export import ExportSettings
    from musegen.generation import Generator
    from musegen.predictor import NextSegment

log = logging.getLogger(__name__)

Note = tuple[float, float, int, int]  # (start_s, end_s, midi_pitch, velocity), as musegen.midi

#: Prompt phrasings for prompt_adherence; deliberately unlike the demo set's caption templates,
#: so the metric measures generalisation to a new wording, not recall of a training caption.
PROMPT_PHRASINGS = (
    "music played on the {name}",
    "{name} solo",
    "a short piece for {name}",
    "the sound of a {name}",
)


# ============================================================================ skill
def skill(model_mse: float | torch.Tensor, persistence_mse: float | torch.Tensor) -> torch.Tensor:
    """1 - MSE(model) / MSE(persistence): 0 for repeating the last frame, 1 for a perfect predictor."""
    model_mse = torch.as_tensor(model_mse, dtype=torch.float64)
    persistence_mse = torch.as_tensor(persistence_mse, dtype=torch.float64)
    return 1.0 - model_mse / persistence_mse.clamp(min=1e-12)


@torch.inference_mode()
def next_segment_skill(
    module: NextSegment, data: MuseDataModule | Iterable[Mapping[str, torch.Tensor]],
) -> dict[str, float]:
    """Model vs persistence MSE on next-segment MFCC in normalised units, over every test window.

    `data` is a set-up datamodule (its test split is used) or any iterable of window batches
    (context, context_mask, target, text, reference). Normalised units weight every MFCC equally,
    as the training loss does; persistence repeats the last real context frame.
    """
    batches = data.test_dataloader() if hasattr(data, "test_dataloader") else data
    m, dev = int(module.n_mfcc), _module_device(module)
    was_training = bool(getattr(module, "training", False))
    if was_training:
        module.eval()  # dropout off: the number must not depend on the call
    model_se = persist_se = 0.0
    count = 0
    try:
        for batch in batches:
            b = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            pred = module.predict_next(b["context"], b["context_mask"], b["text"], b["reference"])[..., :m]
            target = module.normalise(b["target"])[..., :m]
            persist = module.persistence(b["context"], b["context_mask"])[..., :m]
            model_se += float(((pred - target) ** 2).double().sum())
            persist_se += float(((persist - target) ** 2).double().sum())
            count += target.numel()
    finally:
        if was_training:
            module.train()
    if count == 0:
        raise ValueError("next_segment_skill: no test windows (is the test split empty?)")
    mse, pmse = model_se / count, persist_se / count
    return {"skill": float(skill(mse, pmse)), "mse": mse, "persistence_mse": pmse, "values": count}


def _ridge_arrays(module: NextSegment, batches: Iterable[Mapping[str, torch.Tensor]], frames: int) -> tuple[np.ndarray, ...]:
    """Inputs (the last `frames` normalised context frames, masked, and the text), next-segment MFCC
    targets and persistence predictions, all in normalised units."""
    m, xs, ys, ps = int(module.n_mfcc), [], [], []
    with torch.no_grad():
        for b in batches:
            mask = b["context_mask"]
            ctx = module.normalise(b["context"]) * mask[..., None]
            target = module.normalise(b["target"])[..., :m]
            xs.append(torch.cat([ctx[:, -frames:].flatten(1), mask[:, -frames:].float(), b["text"]], 1))
            ys.append(target.flatten(1))
            ps.append(module.persistence(b["context"], mask)[..., :m].flatten(1))
    return tuple(torch.cat(a).double().numpy() for a in (xs, ys, ps))


def linear_skill(module: NextSegment, train: Iterable[Mapping[str, torch.Tensor]],
                 test: Iterable[Mapping[str, torch.Tensor]], frames: int = 4, alpha: float = 100.0) -> float:
    """The linear baseline the BiGRU must beat: ridge regression from the last `frames` context frames
    and the text embedding to the next segment's MFCC, fit on `train` windows, skill on `test` windows
    (normalised with the module's statistics, as the model's own skill)."""
    from sklearn.linear_model import Ridge  # noqa: PLC0415

    x_train, y_train, _ = _ridge_arrays(module, train, frames)
    x_test, y_test, persist = _ridge_arrays(module, test, frames)
    pred = Ridge(alpha=alpha).fit(x_train, y_train).predict(x_test)
    return float(skill(((pred - y_test) ** 2).mean(), ((persist - y_test) ** 2).mean()))


def _module_device(module: Any) -> torch.device:
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


# ============================================================================ pitch-class profiles
def pitch_class_profile(chroma: np.ndarray) -> np.ndarray:
    """[T, 12] chroma -> [12] time average: which pitch classes the passage dwells on (its key)."""
    chroma = np.asarray(chroma, dtype=np.float64)
    if chroma.ndim != 2 or chroma.shape[0] == 0:
        raise ValueError(f"chroma must be [T, 12] with T >= 1, got {chroma.shape}")
    return chroma.mean(axis=0)


def profile_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two profiles; identical -> 1, and 0 when either is flat (no key)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"profiles differ in shape: {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denom) if denom > 1e-12 else 0.0


# ============================================================================ generated samples
@dataclass
class Sample:
    """One generated sample: what the model meant (frames) and what the written audio holds."""
    frames: np.ndarray             # [T, 32] generated raw features
    audio: np.ndarray              # finished mono audio, as written
    extracted: np.ndarray          # [T', 32] features re-extracted from `audio`
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def instrument_for(label: str | None) -> Instrument | None:
    """The Instrument a class label names ("violin", "Sound_Violin"), or None."""
    if not label:
        return None
    return INSTRUMENTS.get(label) or find_instrument(label.replace("_", " "))


def register_for(label: str | None) -> int:
    """Synthesis/transcription register for a label: the instrument's, else middle C."""
    inst = instrument_for(label)
    return inst.register if inst else 60


def render_sample(
    frames: np.ndarray, features: FeatureConfig, synth: Synthesizer, seconds: float, register: int,
    settings: ExportSettings | None = None, path: str | Path | None = None, label: str | None = None,
) -> Sample:
    """Frames -> the audio generate.py would write (export.synthesize) -> re-extracted features.

    With `path` the audio is written as WAV and read back, so the features come from the file
    itself; without, from the identical in-memory signal.
    """
    from musegen.audio import write_audio  # noqa: PLC0415
    from musegen.export import ExportSettings, synthesize  # noqa: PLC0415
    from musegen.features import extract, load_audio  # noqa: PLC0415

    settings = settings or ExportSettings()
    samples = int(round(seconds * features.sample_rate))
    y = synthesize(frames, features, synth, samples, settings, register)
    if path is not None:
        wav = write_audio(y, Path(path), features.sample_rate, ("wav",))[0]
        y = load_audio(wav, features.sample_rate)
    return Sample(frames=np.asarray(frames), audio=y, extracted=extract(y, features), label=label)


# ============================================================================ melody adherence
@dataclass
class MelodyAdherence:
    value: float                   # continuation vs its own reference
    random_reference: float        # continuation vs a random other clip
    unconditioned: float           # generation without reference vs the reference
    samples: list[Sample]          # the continuations (reused by pitch_fidelity and fad)


def melody_adherence(
    generator: Generator, clip_paths: Sequence[str], reference_chroma: Sequence[np.ndarray],
    labels: Sequence[str | None], synth: Synthesizer, seconds: float = 3.0, temperature: float = 0.5,
    seed: int = 0, out_dir: str | Path | None = None,
) -> MelodyAdherence:
    """Mean profile correlation of audio continuations with their references, beside two baselines.

    Each clip is continued (Generator with audio=clip, no prompt, so only the audio conditions),
    synthesised, re-extracted and its pitch-class profile correlated with the clip's. Baselines in
    the same run: the same continuation against a random *other* clip (what key agreement by
    chance looks like) and an unconditioned generation against the clip (what the model does
    without hearing the reference).
    """
    n = len(clip_paths)
    if n < 2 or len(reference_chroma) != n or len(labels) != n:
        raise ValueError(f"melody_adherence needs >= 2 clips with one chroma and label each, got {n}")
    refs = [pitch_class_profile(c) for c in reference_chroma]
    others = _derangement(n, seed)
    feats, m = generator.features, generator.features.n_mfcc
    own, rand, uncond, samples = [], [], [], []
    for i, path in enumerate(clip_paths):
        register = register_for(labels[i])
        for kind, audio in (("continuation", path), ("unconditioned", None)):
            frames = generator.generate(audio=audio, duration=seconds, temperature=temperature, seed=seed + i).frames[0]
            where = Path(out_dir) / f"{kind}-{i:03d}" if out_dir else None
            s = render_sample(frames, feats, synth, seconds, register, path=where, label=labels[i])
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


# ============================================================================ pitch fidelity
def voiced_frames(
    audio: np.ndarray, features: FeatureConfig, rel_db: float = 30.0, floor_db: float = -60.0,
) -> np.ndarray:
    """Boolean per frame (aligned with features.extract): loud enough that a pitch is audible."""
    import librosa  # noqa: PLC0415

    rms = librosa.feature.rms(y=np.asarray(audio, dtype=np.float32), frame_length=features.n_fft,
                              hop_length=features.hop_length)[0]
    db = 20.0 * np.log10(np.maximum(rms, 1e-10))
    return (db >= db.max() - rel_db) & (db >= floor_db)


def pitch_fidelity(generated_frames: np.ndarray, written_audio: np.ndarray, features: FeatureConfig) -> float:
    """Fraction of voiced frames whose chroma argmax re-extracted from the audio equals the generated one.

    Voicing comes from the audio (a silent frame sounds no pitch, so it cannot be judged); no
    voiced frame at all scores 0 (the audio sounds none of the intended notes).
    """
    from musegen.features import extract  # noqa: PLC0415

    gen = np.asarray(generated_frames)[:, features.n_mfcc:]
    voiced = voiced_frames(written_audio, features)
    if not voiced[: len(gen)].any():
        return 0.0
    heard = extract(np.asarray(written_audio, dtype=np.float32), features)[:, features.n_mfcc:]
    t = min(len(gen), len(heard), len(voiced))
    voiced = voiced[:t]
    same = np.argmax(gen[:t], axis=1) == np.argmax(heard[:t], axis=1)
    return float(same[voiced].mean())


# ============================================================================ FAD
def pooled_embedding(frames: np.ndarray) -> np.ndarray:
    """[T, F] frames -> [2F] mean and std over time: a clip-level summary of timbre and pitch use."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ValueError(f"frames must be [T, F] with T >= 1, got {frames.shape}")
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)])


def frechet_distance(emb_a: np.ndarray, emb_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussian fits of two embedding sets [N, D] and [M, D].

    ``eps`` on the covariance diagonals keeps the matrix square root defined when there are
    fewer samples than dimensions; identical sets give 0 (up to rounding, clamped at 0).
    """
    from scipy import linalg  # noqa: PLC0415

    a, b = np.atleast_2d(np.asarray(emb_a, dtype=np.float64)), np.atleast_2d(np.asarray(emb_b, dtype=np.float64))
    if a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise ValueError(f"embeddings must be [N, D] and [M, D] with N, M >= 1, got {a.shape} and {b.shape}")
    cov_a, cov_b = _cov(a) + eps * np.eye(a.shape[1]), _cov(b) + eps * np.eye(b.shape[1])
    covmean = np.real(linalg.sqrtm(cov_a @ cov_b))
    if not np.all(np.isfinite(covmean)):
        raise ValueError("frechet_distance: covariance square root is not finite")
    diff = a.mean(axis=0) - b.mean(axis=0)
    d = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(d, 0.0)


def _cov(x: np.ndarray) -> np.ndarray:
    return np.cov(x, rowvar=False, bias=True) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))


def fad(generated: Sequence[np.ndarray], real: Sequence[np.ndarray],
        mean: np.ndarray | None = None, std: np.ndarray | None = None) -> float:
    """FAD of two sets of clips' frames [T, F]: frechet_distance of their pooled embeddings.

    With `mean`/`std` (the model's training statistics) frames are standardised first, so the
    loud MFCC 0 does not drown every other dimension; baselines must use the same statistics.
    """
    def embed(clips: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for f in clips:
            f = np.asarray(f, dtype=np.float64)
            if mean is not None and std is not None:
                f = (f - np.asarray(mean)) / np.asarray(std)
            out.append(pooled_embedding(f))
        return np.stack(out)

    return frechet_distance(embed(generated), embed(real))


def white_noise_frames(n: int, seconds: float, features: FeatureConfig, seed: int = 0) -> list[np.ndarray]:
    """Features of `n` white-noise clips: the "knows nothing about music" end of FAD's scale."""
    from musegen.features import extract  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    samples = int(round(seconds * features.sample_rate))
    return [extract((0.1 * rng.standard_normal(samples)).astype(np.float32), features) for _ in range(n)]


# ============================================================================ notes
def note_f1(est_notes: Sequence[Note], ref_notes: Sequence[Note]) -> float:
    """mir_eval note F1: onset within 50 ms, pitch within 50 cents, offsets ignored.

    Both empty is a perfect transcription (1); one empty scores 0. Zero-length notes are dropped
    (mir_eval rejects them).
    """
    import mir_eval  # noqa: PLC0415

    est, ref = _note_arrays(est_notes), _note_arrays(ref_notes)
    if len(ref[0]) == 0 or len(est[0]) == 0:
        return 1.0 if len(ref[0]) == len(est[0]) else 0.0
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref[0], ref[1], est[0], est[1], onset_tolerance=0.05, pitch_tolerance=50.0, offset_ratio=None)
    return float(f1)


def _note_arrays(notes: Sequence[Note]) -> tuple[np.ndarray, np.ndarray]:
    """Notes -> (intervals [N, 2] seconds, pitches [N] Hz), positive durations only."""
    kept = [(float(n[0]), float(n[1]), float(n[2])) for n in notes if float(n[1]) > float(n[0])]
    if not kept:
        return np.zeros((0, 2)), np.zeros(0)
    arr = np.array(kept)
    return arr[:, :2], 440.0 * 2.0 ** ((arr[:, 2] - 69.0) / 12.0)


def midi_notes(path: str | Path, max_seconds: float | None = None) -> list[Note]:
    """Ground-truth notes of a MIDI file (pretty_midi), drums excluded, cut at `max_seconds`."""
    import pretty_midi  # noqa: PLC0415

    pm = pretty_midi.PrettyMIDI(str(path))
    notes = [(n.start, n.end, n.pitch, n.velocity) for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    if max_seconds is not None:
        notes = [(s, min(e, max_seconds), p, v) for s, e, p, v in notes if s < max_seconds]
    return sorted(notes)


def pyin_notes(y: np.ndarray, features: FeatureConfig, fmin: float = 65.4, fmax: float = 2093.0,
               min_note_frames: int = 3) -> list[Note]:
    """A plain pitch-tracker transcription, the baseline for note_f1.

    librosa.pyin gives f0 per frame; a note runs while the rounded MIDI pitch (median-filtered
    over 5 frames) holds and the frame is voiced, and a librosa onset starts a new one (repeated
    notes). Runs shorter than `min_note_frames` are dropped.
    """
    import librosa  # noqa: PLC0415
    import scipy.signal  # noqa: PLC0415

    sr, hop = features.sample_rate, features.hop_length
    f0, voiced, _ = librosa.pyin(y, fmin=fmin, fmax=fmax, sr=sr, frame_length=features.n_fft, hop_length=hop)
    pitch = np.where(voiced & np.isfinite(f0), np.round(librosa.hz_to_midi(np.nan_to_num(f0, nan=1.0))), -1)
    pitch = scipy.signal.medfilt(pitch, 5).astype(int)
    onsets = set(librosa.onset.onset_detect(y=y, sr=sr, hop_length=hop, units="frames").tolist())
    notes, start = [], 0
    for t in range(1, len(pitch) + 1):
        if t == len(pitch) or pitch[t] != pitch[start] or t in onsets:
            if pitch[start] > 0 and t - start >= min_note_frames:
                notes.append((start * hop / sr, t * hop / sr, int(pitch[start]), 80))
            start = t
    return notes


def argmax_notes(frames: np.ndarray, features: FeatureConfig, register: int = 60, voicing_db: float = 35.0,
                 min_note_frames: int = 2) -> list[Note]:
    """The naive transcription musegen's must beat: a note per run of one chroma argmax over loud
    frames (within `voicing_db` of the clip's loudest), in the octave nearest `register`."""
    import scipy.fft  # noqa: PLC0415

    frames = np.asarray(frames, dtype=np.float64)
    log_mel = scipy.fft.idct(frames[:, : features.n_mfcc], axis=-1, type=2, norm="ortho", n=features.n_mels)
    loud = 10.0 * np.log10(np.sum(10.0 ** (log_mel / 10.0), axis=-1) + 1e-30)
    pcs = np.where(loud >= loud.max() - voicing_db, np.argmax(frames[:, features.n_mfcc:], axis=-1), -1)
    notes, start, sec = [], 0, features.frame_seconds
    for t in range(1, len(pcs) + 1):
        if t == len(pcs) or pcs[t] != pcs[start]:
            if pcs[start] >= 0 and t - start >= min_note_frames:
                pitch = register + (int(pcs[start]) - register + 6) % 12 - 6
                notes.append((start * sec, t * sec, pitch, 80))
            start = t
    return notes


def musegen_notes(frames: np.ndarray, features: FeatureConfig, label: str | None) -> list[Note]:
    """musegen's own transcription (midi.frames_to_notes) in the label instrument's register and range."""
    from musegen.midi import frames_to_notes  # noqa: PLC0415

    inst = instrument_for(label)
    if inst is None:
        return frames_to_notes(frames, features)
    return frames_to_notes(frames, features, register=inst.register, pitch_range=(inst.low, inst.high))


def pyin_range(label: str | None) -> tuple[float, float]:
    """pyin's search range: the instrument's playable range +- 2 semitones, else C2..C7."""
    inst = instrument_for(label)
    if inst is None:
        return 65.4, 2093.0
    return 440.0 * 2.0 ** ((inst.low - 2 - 69) / 12.0), 440.0 * 2.0 ** ((inst.high + 2 - 69) / 12.0)


# ============================================================================ instrument classifier
class InstrumentClassifier:
    """A fixed judge for prompt_adherence: StandardScaler + LogisticRegression on pooled MFCCs.

    Mean and std over time of the MFCCs only (timbre, not pitch), fit on real training clips.
    Fixed means it never sees generated audio, so it cannot learn the model's artefacts.
    """

    def __init__(self, n_mfcc: int = 20, c: float = 1.0, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
        from sklearn.pipeline import make_pipeline  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

        self.n_mfcc = n_mfcc
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([pooled_embedding(np.asarray(f)[:, : self.n_mfcc]) for f in clips])

    def fit(self, clips: Sequence[np.ndarray], labels: Sequence[str]) -> InstrumentClassifier:
        if len(set(labels)) < 2:
            raise ValueError(f"InstrumentClassifier needs >= 2 classes in the training clips, "
                             f"got {sorted(set(labels))}")
        self.model.fit(self.embed(clips), list(labels))
        return self

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.model.classes_]

    def predict(self, clips: Sequence[np.ndarray]) -> list[str]:
        return [str(p) for p in self.model.predict(self.embed(clips))]

    def accuracy(self, clips: Sequence[np.ndarray], labels: Sequence[str]) -> float:
        """Fraction of clips classified as their label (0 for no clips)."""
        if not clips:
            return 0.0
        return float(np.mean([p == y for p, y in zip(self.predict(clips), labels)]))


def prompt_samples(
    generator: Generator, labels: Sequence[str], guidance: float, n_per_label: int, duration: float,
    synth: Synthesizer, temperature: float = 0.5, seed: int = 0, out_dir: str | Path | None = None,
) -> list[Sample]:
    """For each label, `n_per_label` samples from a neutral start, prompted with PROMPT_PHRASINGS.

    Each sample is synthesised as generate.py does (export.synthesize, default settings) in the
    named instrument's register, and its features re-extracted from that audio.
    """
    out = []
    for label in labels:
        inst = instrument_for(label)
        name = inst.name if inst else label.replace("_", " ").lower()
        for j in range(n_per_label):
            prompt = PROMPT_PHRASINGS[j % len(PROMPT_PHRASINGS)].format(name=name)
            frames = generator.generate(prompt=prompt, duration=duration, guidance=guidance,
                                        temperature=temperature, seed=seed + j).frames[0]
            where = Path(out_dir) / f"g{guidance:g}-{name.replace(' ', '-')}-{j}" if out_dir else None
            s = render_sample(frames, generator.features, synth, duration, register_for(label), path=where, label=label)
            s.meta.update(prompt=prompt, guidance=guidance)
            out.append(s)
    return out


def prompt_adherence(
    generator: Generator, classifier: InstrumentClassifier, labels: Sequence[str], guidance: float,
    n_per_label: int, duration: float, synth: Synthesizer, temperature: float = 0.5, seed: int = 0,
) -> float:
    """Accuracy of `classifier` on audio generated for prompts naming each label (chance: 1 / its classes)."""
    samples = prompt_samples(generator, labels, guidance, n_per_label, duration, synth, temperature, seed)
    return classifier.accuracy([s.extracted for s in samples], [s.label for s in samples])


# ============================================================================ speed
def rtf(audio_seconds: float, wall_seconds: float) -> float:
    """Real-time factor: seconds of audio produced per wall-clock second (> 1 is faster than real time)."""
    if wall_seconds <= 0:
        raise ValueError(f"wall_seconds must be > 0, got {wall_seconds}")
    return float(audio_seconds) / float(wall_seconds)


def measure_rtf(generate_cfg: Any) -> dict[str, float]:
    """Time generate.py's whole path (export.generate_files: load, generate, write every file)."""
    from musegen.export import generate_files  # noqa: PLC0415

    start = time.perf_counter()
    generate_files(generate_cfg)
    wall = time.perf_counter() - start
    audio = float(generate_cfg.duration) * int(generate_cfg.num_samples)
    return {"rtf": rtf(audio, wall), "audio_seconds": audio, "wall_seconds": wall}


# ============================================================================ evaluate.py's run
#: What the design asks of a good model (docs/DESIGN.md, issue 7); shown beside each number.
TARGETS = {
    "skill": ">= 0.5",
    "prompt_adherence": ">= 0.9",
    "melody_adherence": "well above random_reference",
    "pitch_fidelity": ">= 0.9",
    "fad": "near floor, far below noise",
    "note_f1": ">= 0.8",
    "rtf": ">= 20",
}
METRICS = tuple(TARGETS)


@dataclass(frozen=True)
class EvalSettings:
    """The sizes that trade precision for time (evaluate.py's num_prompts, seconds, max_test_clips)."""
    num_prompts: int = 4           # generated samples per instrument label, per guidance value
    seconds: float = 4.0           # seconds per generated sample
    max_test_clips: int = 16       # test clips for the generation-based metrics
    guidance: float = 3.0          # default guidance; prompt_adherence also runs at 0
    temperature: float = 0.5
    seed: int = 0
    write_samples: bool = True
    labels: tuple[str, ...] | None = None  # prompt_adherence labels; None = every class of the classifier
    max_labels: int | None = None          # prompt for at most this many of those labels (first in order)
    rtf_repeats: int = 3                   # rtf is the median of this many generate.py calls

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if self.max_labels is not None and self.max_labels < 1:
            raise ValueError(f"max_labels must be >= 1 or null, got {self.max_labels}")
        if self.rtf_repeats < 1:
            raise ValueError(f"rtf.repeats must be >= 1, got {self.rtf_repeats}")
        if self.max_test_clips < 2:
            raise ValueError(f"max_test_clips must be >= 2 (melody_adherence needs another clip), "
                             f"got {self.max_test_clips}")


def _entry(value: float | None, baselines: Mapping[str, float | None], chance: float | None = None,
           details: Mapping[str, Any] | None = None, name: str = "") -> dict[str, Any]:
    return {"value": value, "baselines": dict(baselines), "chance": chance, "target": TARGETS.get(name),
            "details": dict(details or {})}


def _timed(results: dict[str, Any], name: str, fn, *args, **kwargs) -> dict[str, Any]:
    """Run one metric, record it under `name` with its wall time, and log the headline number."""
    start = time.perf_counter()
    entry = fn(*args, **kwargs)
    entry["details"]["seconds"] = round(time.perf_counter() - start, 3)
    results[name] = entry
    log.info("%s = %s (baselines %s)", name, entry["value"], entry["baselines"])
    return entry


class Evaluation:
    """All metrics for one generator on one set-up datamodule's test split; `run()` returns them.

    Generated samples are made once and shared: the default-guidance prompt samples and the
    continuations feed prompt_adherence/melody_adherence and then pitch_fidelity and fad.
    """

    def __init__(self, generator: Generator, datamodule: MuseDataModule, settings: EvalSettings,
                 out_dir: str | Path, generate_cfg: Any = None) -> None:
        from musegen.audio import Synthesizer  # noqa: PLC0415

        self.gen, self.dm, self.s, self.out = generator, datamodule, settings, Path(out_dir)
        self.generate_cfg = generate_cfg
        self.feats = generator.features
        self.cache = datamodule.cache
        if self.cache is None:
            raise ValueError("Evaluation: call datamodule.setup() first")
        synth_cfg = getattr(generate_cfg, "synth", None) or {}
        self.synth = Synthesizer(self.feats, n_iter=int(synth_cfg.get("n_iter", 32)),
                                 momentum=float(synth_cfg.get("momentum", 0.99)))
        self.train_ids = datamodule.clip_indices("train")
        self.test_ids = datamodule.clip_indices("test")
        self.eval_ids = self._subset(self.test_ids)
        self.generated: list[Sample] = []   # default-guidance samples, for pitch_fidelity and fad
        self._resynthesised: dict[tuple[int, str | None], Sample] = {}

    def _subset(self, ids: list[int]) -> list[int]:
        if len(ids) < 2:
            raise ValueError(f"the test split has {len(ids)} clip(s); evaluation needs >= 2 "
                             "(more data, or a larger data.test_fraction)")
        if len(ids) <= self.s.max_test_clips:
            return ids
        rng = np.random.default_rng(self.s.seed)
        return sorted(int(i) for i in rng.choice(ids, self.s.max_test_clips, replace=False))

    def frames(self, ids: Iterable[int]) -> list[np.ndarray]:
        return [self.cache.clip_frames(i).numpy() for i in ids]

    def labels(self, ids: Iterable[int]) -> list[str]:
        return [self.cache.labels[i] for i in ids]

    def samples_dir(self, name: str) -> Path | None:
        return self.out / "samples" / name if self.s.write_samples else None

    # -- metrics -------------------------------------------------------------------------------
    def skill(self) -> dict[str, Any]:
        r = next_segment_skill(self.gen.module, self.dm)
        ridge = linear_skill(self.gen.module, self.dm.dataloader("train"), self.dm.test_dataloader())
        return _entry(r["skill"], {"persistence": 0.0, "ridge": ridge}, details=r, name="skill")

    def prompt_adherence(self) -> dict[str, Any]:
        clf = InstrumentClassifier(self.feats.n_mfcc, seed=self.s.seed).fit(
            self.frames(self.train_ids), self.labels(self.train_ids))
        labels = self.prompt_labels(clf.classes)
        test_acc = clf.accuracy(self.frames(self.test_ids), self.labels(self.test_ids))
        resynth_acc = clf.accuracy([self._resynth(i).extracted for i in self.eval_ids], self.labels(self.eval_ids))
        acc = {}
        for g in (0.0, self.s.guidance):
            samples = prompt_samples(self.gen, labels, g, self.s.num_prompts, self.s.seconds, self.synth,
                                     self.s.temperature, self.s.seed, self.samples_dir("prompts"))
            acc[g] = clf.accuracy([x.extracted for x in samples], [x.label for x in samples])
            if g == self.s.guidance:
                self.generated += samples
        chance = 1.0 / len(clf.classes)
        baselines = {"guidance_0": acc[0.0], "chance": chance, "classifier_real_test": test_acc,
                     "classifier_resynth_test": resynth_acc}
        details = {"guidance": self.s.guidance, "classes": clf.classes, "labels": labels,
                   "per_label": self.s.num_prompts, "phrasings": list(PROMPT_PHRASINGS)}
        return _entry(acc[self.s.guidance], baselines, chance=chance, details=details, name="prompt_adherence")

    def _resynth(self, i: int, synthesis: str | None = None) -> Sample:
        """A test clip's true frames through generate.py's synthesis (or `synthesis` mode): what the
        audio path alone loses, with a perfect model. Rendered once per clip and mode."""
        from musegen.export import ExportSettings  # noqa: PLC0415

        if (i, synthesis) not in self._resynthesised:
            frames = self.cache.clip_frames(i).numpy()
            settings = ExportSettings(synthesis=synthesis) if synthesis else ExportSettings()
            seconds = len(frames) * self.feats.hop_length / self.feats.sample_rate
            self._resynthesised[i, synthesis] = render_sample(frames, self.feats, self.synth, seconds,
                                                              register_for(self.cache.labels[i]), settings)
        return self._resynthesised[i, synthesis]

    def prompt_labels(self, classes: list[str]) -> list[str]:
        """The labels prompted for: settings.labels (each must be a class) or every class, cut to max_labels."""
        labels = classes
        if self.s.labels is not None:
            unknown = sorted(set(self.s.labels) - set(classes))
            if unknown:
                raise ValueError(f"labels {unknown} are not classes of the training clips {classes}")
            labels = list(self.s.labels)
        return labels[: self.s.max_labels] if self.s.max_labels else labels

    def melody_adherence(self) -> dict[str, Any]:
        ids = self.eval_ids
        chroma = [f[:, self.feats.n_mfcc:] for f in self.frames(ids)]
        m = melody_adherence(self.gen, [self.cache.paths[i] for i in ids], chroma,
                             self.labels(ids), self.synth, self.s.seconds, self.s.temperature, self.s.seed,
                             self.samples_dir("continuations"))
        self.generated += m.samples
        return _entry(m.value, {"random_reference": m.random_reference, "unconditioned": m.unconditioned},
                      chance=m.random_reference, details={"clips": len(ids)}, name="melody_adherence")

    def pitch_fidelity(self) -> dict[str, Any]:
        if not self.generated:
            raise RuntimeError("pitch_fidelity needs the generated samples: run prompt/melody adherence first")
        rng = np.random.default_rng(self.s.seed)
        value = float(np.mean([pitch_fidelity(x.frames, x.audio, self.feats) for x in self.generated]))
        random = float(np.mean([pitch_fidelity(_random_chroma(x.frames, self.feats.n_mfcc, rng), x.audio, self.feats)
                                for x in self.generated]))
        true_mix = float(np.mean([pitch_fidelity(r.frames, r.audio, self.feats)
                                  for r in map(self._resynth, self.eval_ids)]))
        true_mfcc = float(np.mean([pitch_fidelity(r.frames, r.audio, self.feats)
                                   for r in (self._resynth(i, "mfcc") for i in self.eval_ids)]))
        return _entry(value, {"random": random, "true_frames_resynth": true_mix, "true_frames_inverse_mfcc": true_mfcc},
                      chance=random, details={"samples": len(self.generated)}, name="pitch_fidelity")

    def fad(self) -> dict[str, Any]:
        mean, std = (self.gen.module.mean.cpu().numpy(), self.gen.module.std.cpu().numpy())
        real_test = self.frames(self.test_ids)
        generated = [x.extracted for x in self.generated]
        value = fad(generated, real_test, mean, std)
        floor = fad(self.frames(self.train_ids), real_test, mean, std)
        noise = fad(white_noise_frames(len(generated), self.s.seconds, self.feats, self.s.seed), real_test, mean, std)
        return _entry(value, {"floor_train_vs_test": floor, "white_noise": noise}, name="fad",
                      details={"generated": len(generated), "real_test": len(real_test),
                               "note": "pooled [mean, std] of standardised frames; small sets bias FAD upwards"})

    def note_f1(self) -> dict[str, Any]:
        ids = [i for i in self.eval_ids if self.cache.midi[i]]
        if not ids:
            log.warning("note_f1: no evaluated test clip has ground-truth MIDI (only the demo source has it)")
            return _entry(None, {"pyin_onsets": None, "chroma_argmax": None}, details={"clips": 0}, name="note_f1")
        from musegen.features import load_audio  # noqa: PLC0415

        ours, naive, pyin = [], [], []
        for i in ids:
            frames, label = self.cache.clip_frames(i).numpy(), self.cache.labels[i]
            samples = len(frames) * self.feats.hop_length
            ref = midi_notes(self.cache.midi[i], samples / self.feats.sample_rate)
            ours.append(note_f1(musegen_notes(frames, self.feats, label), ref))
            naive.append(note_f1(argmax_notes(frames, self.feats, register_for(label)), ref))
            y = load_audio(self.cache.paths[i], self.feats.sample_rate)[:samples]
            pyin.append(note_f1(pyin_notes(y, self.feats, *pyin_range(label)), ref))
        baselines = {"pyin_onsets": float(np.mean(pyin)), "chroma_argmax": float(np.mean(naive))}
        return _entry(float(np.mean(ours)), baselines,
                      details={"clips": len(ids), "input": "true features / audio of the test clips"}, name="note_f1")

    def rtf(self) -> dict[str, Any]:
        if self.generate_cfg is None:
            return _entry(None, {}, name="rtf", details={"skipped": "no generate config given"})
        runs = [measure_rtf(self.generate_cfg) for _ in range(self.s.rtf_repeats)]
        return _entry(statistics.median(r["rtf"] for r in runs), {}, name="rtf", details={
            "audio_seconds": runs[0]["audio_seconds"], "wall_seconds": [r["wall_seconds"] for r in runs],
            "what": "median of generate.py calls in this process (the text model already loaded)"})

    def run(self) -> dict[str, dict[str, Any]]:
        """Every metric, in the order that lets later ones reuse earlier samples."""
        results: dict[str, dict[str, Any]] = {}
        for name in ("skill", "prompt_adherence", "melody_adherence", "pitch_fidelity", "fad", "note_f1", "rtf"):
            _timed(results, name, getattr(self, name))
        return {k: results[k] for k in METRICS}


def _random_chroma(frames: np.ndarray, n_mfcc: int, rng: np.random.Generator) -> np.ndarray:
    """The same frames with uniformly random chroma: pitch_fidelity's chance level (about 1/12)."""
    out = np.array(frames, dtype=np.float32, copy=True)
    out[:, n_mfcc:] = rng.random((len(out), out.shape[1] - n_mfcc))
    return out


def finite_or_none(obj: Any) -> Any:
    """Replace NaN/inf floats by None (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return finite_or_none(obj.item())
    return obj


def run_config_path(ckpt: str | Path) -> Path:
    """Where train.py left the checkpoint's run config: <run>/.hydra/config.yaml (ckpt is <run>/checkpoints/x.ckpt)."""
    return Path(ckpt).resolve().parent.parent / ".hydra" / "config.yaml"


def training_data_config(ckpt: str | Path) -> dict[str, Any] | None:
    """The data config the checkpoint was trained with, resolved, or None without a run folder.

    The test split is a function of the data source, its settings and the seed, so evaluating on
    anything else would mix training clips into the test set. A relative paths.root_dir is taken
    from the directory training ran in (.hydra/hydra.yaml), not from where evaluate.py runs.
    """
    from omegaconf import OmegaConf  # noqa: PLC0415

    path = run_config_path(ckpt)
    if not path.is_file():
        return None
    run = OmegaConf.load(path)
    root = Path(str(OmegaConf.select(run, "paths.root_dir", default=".")))
    if not root.is_absolute():
        hydra_yaml = path.with_name("hydra.yaml")
        cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd") if hydra_yaml.is_file() else None
        run.paths.root_dir = str((Path(cwd) if cwd else Path.cwd()) / root)
    return OmegaConf.to_container(run.data, resolve=True)


def build_datamodule(data_cfg: Mapping[str, Any], generator: Generator) -> MuseDataModule:
    """The datamodule of `data_cfg` with the checkpoint's encoder and window sizes, set up.

    The checkpoint's text encoder keeps the cache key (and so the cache) of training; its
    context/segment sizes define the windows skill is measured on.
    """
    from hydra.utils import instantiate  # noqa: PLC0415

    hp = generator.module.hparams
    dm = instantiate(dict(data_cfg), text_encoder=generator.encoder, context_frames=int(hp.context_frames),
                     segment_frames=int(hp.segment_frames), _convert_="all")
    if dm.feature_config != generator.features:
        raise ValueError(f"data features {dm.feature_config} differ from the checkpoint's {generator.features}; "
                         "pass the features the checkpoint was trained with")
    dm.prepare_data()
    dm.setup("test")
    return dm


def evaluate_checkpoint(cfg: Any, out_dir: str | Path, generate_cfg: Any = None) -> dict[str, Any]:
    """evaluate.py's work: checkpoint + data config -> every metric -> <out_dir>/metrics.json."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    from musegen.checkpoint import file_sha256  # noqa: PLC0415
    from musegen.generation import Generator  # noqa: PLC0415
    from musegen.io import write_json  # noqa: PLC0415

    start = time.perf_counter()
    settings = EvalSettings(num_prompts=int(cfg.num_prompts), seconds=float(cfg.seconds),
                            max_test_clips=int(cfg.max_test_clips), guidance=float(cfg.guidance),
                            temperature=float(cfg.temperature), seed=int(cfg.seed),
                            write_samples=bool(cfg.write_samples),
                            labels=tuple(cfg.labels) if cfg.get("labels") else None,
                            max_labels=None if cfg.get("max_labels") is None else int(cfg.max_labels),
                            rtf_repeats=int(cfg.rtf.get("repeats", 3)))
    generator = Generator.from_checkpoint(cfg.ckpt, device=cfg.device)
    data_cfg, origin = _data_config(cfg)
    dm = build_datamodule(data_cfg, generator)
    evaluation = Evaluation(generator, dm, settings, out_dir, generate_cfg)
    metrics = evaluation.run()
    results = finite_or_none({
        "checkpoint": str(cfg.ckpt), "checkpoint_sha256": file_sha256(cfg.ckpt),
        "data": {"config_from": origin, "cache": str(dm.cache.path), "labels": dm.labels,
                 "train_clips": len(evaluation.train_ids), "test_clips": len(evaluation.test_ids),
                 "evaluated_test_clips": len(evaluation.eval_ids)},
        "settings": settings.__dict__, "device": str(generator.device),
        "metrics": metrics, "seconds": round(time.perf_counter() - start, 3),
        "rtf_generate_config": OmegaConf.to_container(generate_cfg, resolve=True) if generate_cfg is not None else None,
    })
    write_json(Path(out_dir) / "metrics.json", results)
    log.info("wrote %s", Path(out_dir) / "metrics.json")
    return results


def _data_config(cfg: Any) -> tuple[dict[str, Any], str]:
    """The run's data config when data_from_run and it exists, else the one composed by evaluate.py."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    if cfg.get("data_from_run", True):
        found = training_data_config(cfg.ckpt)
        if found is not None:
            log.info("data: using the checkpoint's training data config %s (data.* overrides here are ignored; "
                     "set data_from_run=false to use them)", run_config_path(cfg.ckpt))
            return found, str(run_config_path(cfg.ckpt))
        log.warning("data: no %s; using the data config given to evaluate.py: it must match the training run's "
                    "(same data=..., data.* and seed overrides)", run_config_path(cfg.ckpt))
    return OmegaConf.to_container(cfg.data, resolve=True), "evaluate.py config"
