"""evaluate.py's run: every metric of docs/DESIGN.md for one checkpoint on its test split, each
beside the baselines computed in the same run (``Evaluation``)."""
from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from musegen.audio import Synthesizer
from musegen.data.datamodule import MuseDataModule
from musegen.eval import realism as realism_lib
from musegen.eval.baselines import (
    argmax_notes,
    linear_skill,
    pyin_notes,
    pyin_range,
    random_chroma,
    white_noise_audio,
    white_noise_frames,
)
from musegen.eval.harness import (
    AudioPath,
    Sample,
    melody_adherence,
    musegen_notes,
    next_segment_skill,
    prompt_samples,
)
from musegen.eval.metrics import InstrumentClassifier, fad, mel_fad, midi_notes, note_f1, pitch_fidelity
from musegen.export import ExportSettings, Renderer, check_vocoder_given
from musegen.features import load_audio
from musegen.generation import Generator
from musegen.instruments import register_for
from musegen.io import finite_or_none

log = logging.getLogger(__name__)

# -- evaluate.py's run ---------------------------------------------------------------------------
#: What the design asks of a good model (docs/DESIGN.md, issue 7); shown beside each number.
TARGETS = {
    "skill": ">= 0.5",
    "prompt_adherence": ">= 0.9",
    "melody_adherence": "well above random_reference",
    "pitch_fidelity": ">= 0.9",
    "fad": "near floor, far below noise",
    "mel_fad": "near train_same_size (a perfect model), far below noise",
    "note_f1": ">= 0.8",
    "realism": "two-sample accuracy <= 0.75 vs resynthesised test clips",
    "rtf": ">= 20",
}
METRICS = tuple(TARGETS)


@dataclass(frozen=True)
class EvalSettings:
    """What evaluate.py measures and how precisely (conf/evaluate.yaml, `settings`, documents each)."""

    num_prompts: int
    seconds: float
    max_test_clips: int
    guidance: float | None         # None: the checkpoint's default; prompt_adherence also runs at 0
    temperature: float | None      # None: the checkpoint's default, as for the other sampling settings
    top_k: int | None
    top_p: float | None
    min_p: float | None
    pitch_temperature: float | None
    min_note_frames: int | None
    seed: int
    write_samples: bool
    labels: tuple[str, ...] | None
    max_labels: int | None
    rtf_repeats: int
    realism_seconds: float          # each generated clip the realism measures hear
    long_seconds: float             # the long generation whose first and last windows are compared
    fad_samples: int                # generated clips FAD compares with the test clips
    metrics: tuple[str, ...] | None  # the metrics to compute (None: all of METRICS)

    def __post_init__(self) -> None:
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
        if self.metrics is not None:
            object.__setattr__(self, "metrics", tuple(self.metrics))
            unknown = sorted(set(self.metrics) - set(METRICS))
            if unknown:
                raise ValueError(f"metrics: unknown {unknown}; known: {list(METRICS)}")
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if self.max_labels is not None and self.max_labels < 1:
            raise ValueError(f"max_labels must be >= 1 or null, got {self.max_labels}")
        if self.realism_seconds < 4.0 or self.long_seconds < 8.0:
            raise ValueError(f"realism_seconds must be >= 4 and long_seconds >= 8 (the descriptors use 4 s "
                             f"windows), got {self.realism_seconds} and {self.long_seconds}")
        if self.fad_samples < 2:
            raise ValueError(f"fad_samples must be >= 2 (FAD fits a covariance), got {self.fad_samples}")
        if self.rtf_repeats < 1:
            raise ValueError(f"rtf_repeats must be >= 1, got {self.rtf_repeats}")
        if self.max_test_clips < 2:
            raise ValueError(f"max_test_clips must be >= 2 (melody_adherence needs another clip), "
                             f"got {self.max_test_clips}")


def _median_stats(rows: list[dict[str, float]]) -> dict[str, float | None]:
    """Per-key median over clips (NaN-aware; None when no clip has a value)."""
    if not rows:
        return {}
    return {k: finite_or_none(float(np.nanmedian([r[k] for r in rows]))) for k in rows[0]}


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
    continuations feed prompt_adherence/melody_adherence and then pitch_fidelity, fad and mel_fad.
    """

    def __init__(self, generator: Generator, datamodule: MuseDataModule, settings: EvalSettings,
                 synth: Synthesizer, export: ExportSettings, out_dir: str | Path,
                 generate_call: Callable[[], dict[str, float]] | None = None,
                 vocoder: Renderer | None = None) -> None:
        """``synth``/``export``: the synthesis and export settings generate.py uses; ``generate_call``:
        one timed generate.py call ({"rtf", "audio_seconds", "wall_seconds"}), or None to skip rtf;
        ``vocoder``: a trained vocoder that renders every generated and resynthesised clip in place of
        ``synth``, as generate.py's vocoder=PATH does (``synth`` still renders the analytic baselines)."""
        self.gen, self.dm, self.s, self.out = generator, datamodule, settings, Path(out_dir)
        self.generate_call = generate_call
        self.feats = generator.features
        self.cache = datamodule.cache
        if self.cache is None:
            raise ValueError("Evaluation: call datamodule.setup() first")
        check_vocoder_given(export.synthesis, vocoder)
        self.synth, self.export, self.vocoder = synth, export, vocoder
        self.audio_path = self._path("vocoder" if vocoder is not None else export.synthesis)
        sampling = generator.sampling(settings.guidance, settings.temperature, settings.top_k, settings.top_p,
                                      settings.min_p, settings.pitch_temperature, settings.min_note_frames)
        self.guidance = sampling.pop("guidance")
        self.sampling = sampling   # every other sampling setting, as each generate() call gets it
        self.train_ids = datamodule.clip_indices("train")
        self.test_ids = datamodule.clip_indices("test")
        self.eval_ids = self._subset(self.test_ids)
        self.generated: list[Sample] = []   # default-guidance samples, for pitch_fidelity and fad
        self.prompted: list[str] = []       # the labels prompt_adherence prompted for
        self._fad_samples: list[Sample] | None = None
        self._resynthesised: dict[tuple[int, str | None], Sample] = {}

    def _subset(self, ids: list[int]) -> list[int]:
        if len(ids) < 2:
            raise ValueError(f"the test split has {len(ids)} clip(s); evaluation needs >= 2 "
                             "(more data, or a larger data.test_fraction)")
        return self._choose(ids, self.s.max_test_clips)

    def _choose(self, ids: list[int], n: int) -> list[int]:
        """At most n of ids, a seeded random subset in order (all of them when there are no more)."""
        if len(ids) <= n:
            return ids
        rng = np.random.default_rng(self.s.seed)
        return sorted(int(i) for i in rng.choice(ids, n, replace=False))

    def frames(self, ids: Iterable[int]) -> list[np.ndarray]:
        return [self.cache.clip_frames(i).numpy() for i in ids]

    def clip_audio(self, i: int) -> np.ndarray:
        """The audio of cached clip i: its part of its file (a long file is cached as several clips)."""
        sr, hop = self.feats.sample_rate, self.feats.hop_length
        start = int(round(self.cache.starts[i] * sr))
        return load_audio(self.cache.paths[i], sr)[start:start + len(self.cache.clip_frames(i)) * hop]

    def labels(self, ids: Iterable[int]) -> list[str]:
        return [self.cache.labels[i] for i in ids]

    def samples_dir(self, name: str) -> Path | None:
        return self.out / "samples" / name if self.s.write_samples else None

    # -- metrics -------------------------------------------------------------------------------
    def skill(self) -> dict[str, Any]:
        r = next_segment_skill(self.gen.model, self.dm.test_dataloader())
        ridge = linear_skill(self.gen.model, self.dm.dataloader("train"), self.dm.test_dataloader())
        return _entry(r["skill"], {"persistence": 0.0, "ridge": ridge}, details=r, name="skill")

    def prompt_adherence(self) -> dict[str, Any]:
        clf = InstrumentClassifier(self.feats.n_mfcc, seed=self.s.seed).fit(
            self.frames(self.train_ids), self.labels(self.train_ids))
        labels = self.prompted = self.prompt_labels(clf.classes)
        test_acc = clf.accuracy(self.frames(self.test_ids), self.labels(self.test_ids))
        resynth_acc = clf.accuracy([self._resynth(i).extracted for i in self.eval_ids], self.labels(self.eval_ids))
        acc, heard_as = {}, {}
        for g in (0.0, self.guidance):
            samples = prompt_samples(self.gen, labels, g, self.s.num_prompts, self.s.seconds, self.audio_path,
                                     self.sampling, self.s.seed, self.samples_dir("prompts"))
            extracted = [x.extracted for x in samples]
            acc[g] = clf.accuracy(extracted, [x.label for x in samples])
            if g == self.guidance:
                self.generated += samples
                for x, heard in zip(samples, clf.predict(extracted)):   # which instrument each prompt sounded like
                    heard_as.setdefault(x.label, Counter())[heard] += 1
        chance = 1.0 / len(clf.classes)
        baselines = {"guidance_0": acc[0.0], "chance": chance, "classifier_real_test": test_acc,
                     "classifier_resynth_test": resynth_acc}
        details = {"guidance": self.guidance, "classes": clf.classes, "labels": labels,
                   "per_label": self.s.num_prompts, "prompts": "musegen.eval.prompts (held out)",
                   "heard_as": {label: dict(c) for label, c in heard_as.items()}}
        return _entry(acc[self.guidance], baselines, chance=chance, details=details, name="prompt_adherence")

    def _path(self, synthesis: str) -> AudioPath:
        """The written-audio path of one synthesis mode: the vocoder's, or the analytic synthesis's."""
        renderer = self.vocoder if synthesis == "vocoder" else self.synth
        return AudioPath(renderer, replace(self.export, synthesis=synthesis))

    def _resynth(self, i: int, synthesis: str | None = None) -> Sample:
        """A cached clip's true frames through generate.py's synthesis (or `synthesis` mode): what the
        audio path alone loses, with a perfect model. Rendered once per clip and mode."""

        if (i, synthesis) not in self._resynthesised:
            frames = self.cache.clip_frames(i).numpy()
            path = self.audio_path if synthesis is None else self._path(synthesis)
            seconds = len(frames) * self.feats.hop_length / self.feats.sample_rate
            self._resynthesised[i, synthesis] = path.render(frames, seconds, register_for(self.cache.labels[i]))
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
                             self.labels(ids), self.audio_path, self.s.seconds, self.sampling, self.s.seed,
                             self.samples_dir("continuations"))
        self.generated += m.samples
        return _entry(m.value, {"random_reference": m.random_reference, "unconditioned": m.unconditioned},
                      chance=m.random_reference, details={"clips": len(ids)}, name="melody_adherence")

    def pitch_fidelity(self) -> dict[str, Any]:
        if not self.generated:
            raise RuntimeError("pitch_fidelity needs the generated samples: run prompt/melody adherence first")
        rng = np.random.default_rng(self.s.seed)
        value = float(np.mean([pitch_fidelity(x.frames, x.audio, self.feats) for x in self.generated]))
        random = float(np.mean([pitch_fidelity(random_chroma(x.frames, self.feats.n_mfcc, rng), x.audio, self.feats)
                                for x in self.generated]))
        true_mix = float(np.mean([pitch_fidelity(r.frames, r.audio, self.feats)
                                  for r in map(self._resynth, self.eval_ids)]))
        true_mfcc = float(np.mean([pitch_fidelity(r.frames, r.audio, self.feats)
                                   for r in (self._resynth(i, "mfcc") for i in self.eval_ids)]))
        return _entry(value, {"random": random, "true_frames_resynth": true_mix, "true_frames_inverse_mfcc": true_mfcc},
                      chance=random, details={"samples": len(self.generated)}, name="pitch_fidelity")

    def fad(self) -> dict[str, Any]:
        """FAD of `fad_samples` generated clips: the adherence samples and, to make up the number, more
        prompt samples. FAD's estimate grows as a set shrinks, so the floor (every training clip) is
        only comparable with a generated set of about its size; `train_same_size` is the floor at
        exactly this size."""
        norm = self.gen.model.normaliser
        mean, std = norm.mean.cpu().numpy(), norm.std.cpu().numpy()
        real_test = self.frames(self.test_ids)
        adherence = [x.extracted for x in self.generated]
        generated = [x.extracted for x in self.fad_set()]
        value = fad(generated, real_test, mean, std)
        floor = fad(self.frames(self.train_ids), real_test, mean, std)
        noise = fad(white_noise_frames(len(generated), self.s.seconds, self.feats, self.s.seed), real_test, mean, std)
        # What a perfect model would score: as many training clips as there are generated samples
        # (or all of them), as they are and through generate.py's audio path.
        ids = self._choose(self.train_ids, len(generated))
        same_size = fad(self.frames(ids), real_test, mean, std)
        resynth = fad([self._resynth(i).extracted for i in ids], real_test, mean, std)
        return _entry(value, {"floor_train_vs_test": floor, "train_same_size": same_size,
                              "train_same_size_resynthesised": resynth, "white_noise": noise}, name="fad",
                      details={"generated": len(generated), "adherence_samples": len(adherence),
                               "adherence_samples_only": fad(adherence, real_test, mean, std),
                               "real_test": len(real_test), "train_same_size_clips": len(ids),
                               "note": "pooled [mean, std] of standardised frames; small sets bias FAD upwards"})

    def fad_set(self) -> list[Sample]:
        """The `fad_samples` generated clips fad and mel_fad compare: the adherence samples, then more
        default-guidance prompt samples; made once."""
        if not self.generated:
            raise RuntimeError("fad and mel_fad need the generated samples: run prompt/melody adherence first")
        if self._fad_samples is None:
            self._fad_samples = self.generated + self._more_prompt_samples(self.s.fad_samples - len(self.generated))
        return self._fad_samples

    def mel_fad(self) -> dict[str, Any]:
        """FAD on log-mel windows of the audio (metrics.mel_fad): the fad set's written audio against the
        real test audio, so the audio path's losses count as a listener hears them. Baselines at the same
        size: real training audio (a perfect model), its true frames through the audio path (a perfect
        model's frames, this synthesis), and with a vocoder the same two through the analytic synthesis."""
        generated = self.fad_set()
        real_test = [self.clip_audio(i) for i in self.test_ids]
        ids = self._choose(self.train_ids, len(generated))

        def score(clips: Iterable[np.ndarray]) -> float:
            return mel_fad(list(clips), real_test, self.feats)

        baselines = {"floor_train_vs_test": score(map(self.clip_audio, self.train_ids)),
                     "train_same_size": score(map(self.clip_audio, ids)),
                     "train_same_size_resynthesised": score(self._resynth(i).audio for i in ids)}
        if self.vocoder is not None:
            analytic = self.export.synthesis
            baselines[f"train_same_size_resynthesised_{analytic}"] = score(self._resynth(i, analytic).audio
                                                                           for i in ids)
            baselines[f"generated_{analytic}"] = score(self._path(analytic).render(
                x.frames, len(x.audio) / self.feats.sample_rate, register_for(x.label)).audio for x in generated)
        baselines["white_noise"] = score(white_noise_audio(len(generated), self.s.seconds, self.feats, self.s.seed))
        details = {"generated": len(generated), "real_test": len(real_test), "train_same_size_clips": len(ids),
                   "synthesis": self.audio_path.export.synthesis,
                   "embedding": "per 1 s window: mean and std over time of 64-band log10 mel power, clips "
                                "peak-normalised"}
        return _entry(score(x.audio for x in generated), baselines, details=details, name="mel_fad")

    def _more_prompt_samples(self, n: int) -> list[Sample]:
        """n more default-guidance prompt samples, the labels taking turns, on seeds after those of
        prompt_adherence's samples (none when n <= 0)."""
        if n <= 0:
            return []
        labels = self.prompted
        per_label = -(-n // len(labels))
        samples = prompt_samples(self.gen, labels, self.guidance, per_label, self.s.seconds, self.audio_path,
                                 self.sampling, self.s.seed + len(labels) * self.s.num_prompts)
        return [samples[i * per_label + j] for j in range(per_label) for i in range(len(labels))][:n]

    def note_f1(self) -> dict[str, Any]:
        ids = [i for i in self.eval_ids if self.cache.midi[i]]
        if not ids:
            log.warning("note_f1: no evaluated test clip has ground-truth MIDI (only the demo source has it)")
            return _entry(None, {"pyin_onsets": None, "chroma_argmax": None}, details={"clips": 0}, name="note_f1")

        ours, naive, pyin = [], [], []
        for i in ids:
            frames, label = self.cache.clip_frames(i).numpy(), self.cache.labels[i]
            samples = len(frames) * self.feats.hop_length
            ref = midi_notes(self.cache.midi[i], samples / self.feats.sample_rate)
            ours.append(note_f1(musegen_notes(frames, self.feats, label), ref))
            naive.append(note_f1(argmax_notes(frames, self.feats, register_for(label)), ref))
            y = self.clip_audio(i)[:samples]
            pyin.append(note_f1(pyin_notes(y, self.feats, *pyin_range(label)), ref))
        baselines = {"pyin_onsets": float(np.mean(pyin)), "chroma_argmax": float(np.mean(naive))}
        return _entry(float(np.mean(ours)), baselines,
                      details={"clips": len(ids), "input": "true features / audio of the test clips"}, name="note_f1")

    def rtf(self) -> dict[str, Any]:
        if self.generate_call is None:
            return _entry(None, {}, name="rtf", details={"skipped": "no generate.py call given"})
        runs = [self.generate_call() for _ in range(self.s.rtf_repeats)]
        return _entry(statistics.median(r["rtf"] for r in runs), {}, name="rtf", details={
            "audio_seconds": runs[0]["audio_seconds"], "wall_seconds": [r["wall_seconds"] for r in runs],
            "what": "median of generate.py calls in this process (the text model already loaded)"})

    def realism(self) -> dict[str, Any]:
        """How music-like generated audio is (musegen.eval.realism): held-out prompts from a neutral
        start, ``realism_seconds`` each, against the test clips resynthesised through the same audio
        path (and the real test audio); note rate and length against the test clips' ground-truth
        MIDI and against the same transcription of their true frames; and the same descriptors on the
        first and last window of one long generation per label (medians over the labels)."""
        seconds, window = self.s.realism_seconds, realism_lib.WINDOW_SECONDS
        labels = sorted(set(self.labels(self.eval_ids)))
        samples = prompt_samples(self.gen, labels, self.guidance, self.s.num_prompts, seconds, self.audio_path,
                                 self.sampling, self.s.seed, self.samples_dir("realism"))
        reference = [self._resynth(i).audio for i in self.eval_ids]
        real = [self.clip_audio(i) for i in self.eval_ids]
        folds = min(5, len(samples), len(reference))  # small evaluations (a smoke run) use fewer folds
        report = realism_lib.realism_report([s.audio for s in samples], reference, self.feats, real, folds=folds,
                                            seed=self.s.seed)
        generated = [musegen_notes(s.frames, self.feats, s.label) for s in samples]
        notes = [realism_lib.note_statistics(n, seconds) for n in generated]
        # The note references read every test clip with a score, not only the evaluated ones: a
        # score and a transcription of cached frames cost little, and the median of a few clips'
        # medians moves a lot with which clips they are.
        sr = self.feats.sample_rate
        with_midi = [(i, len(self.clip_audio(i)) / sr) for i in self.test_ids if self.cache.midi[i]]
        scores = [midi_notes(self.cache.midi[i], span) for i, span in with_midi]
        truth = [realism_lib.note_statistics(n, span) for n, (_, span) in zip(scores, with_midi)]
        # the transcriber's own reading of the real frames: what a perfect model's notes would measure
        ids = [i for i, _ in with_midi]
        transcribed = [musegen_notes(frames, self.feats, label)
                       for frames, label in zip(self.frames(ids), self.labels(ids))]
        read = [realism_lib.note_statistics(n, span) for n, (_, span) in zip(transcribed, with_midi)]
        report["notes"] = {"generated": _median_stats(notes), "ground_truth_midi": _median_stats(truth),
                           "test_frames_transcribed": _median_stats(read),
                           "clips": {"generated": len(notes), "test_clips_with_midi": len(truth)},
                           "durations": {"generated": realism_lib.note_durations(generated),
                                         "ground_truth_midi": realism_lib.note_durations(scores),
                                         "test_frames_transcribed": realism_lib.note_durations(transcribed)}}
        long = prompt_samples(self.gen, labels, self.guidance, 1, self.s.long_seconds, self.audio_path,
                              self.sampling, self.s.seed)
        n, sr = int(window * self.feats.sample_rate), self.feats.sample_rate
        ends = {"first_window": [realism_lib.descriptors(s.audio[:n], sr, self.feats) for s in long],
                "last_window": [realism_lib.descriptors(s.audio[-n:], sr, self.feats) for s in long]}
        report["long_generation"] = {
            "seconds": self.s.long_seconds, "labels": labels, "what": "medians over one generation per label",
            **{k: finite_or_none(realism_lib.median_descriptors(rows)) for k, rows in ends.items()},
            "per_label": {label: finite_or_none({k: rows[j] for k, rows in ends.items()})
                          for j, label in enumerate(labels)},
        }
        accuracy = report["two_sample_accuracy"]
        value = accuracy["generated_vs_reference"]
        baselines = {"reference_vs_real": accuracy.get("reference_vs_real"), "indistinguishable": 0.5}
        return _entry(value, baselines, chance=0.5, details=report, name="realism")

    def run(self) -> dict[str, dict[str, Any]]:
        """The chosen metrics (all by default), in the order that lets later ones reuse earlier samples:
        pitch_fidelity, fad and mel_fad need prompt_adherence's and melody_adherence's samples."""
        wanted = set(self.s.metrics or METRICS)
        if wanted & {"pitch_fidelity", "fad", "mel_fad"}:
            wanted |= {"prompt_adherence", "melody_adherence"}
        results: dict[str, dict[str, Any]] = {}
        for name in ("skill", "prompt_adherence", "melody_adherence", "pitch_fidelity", "fad", "mel_fad", "note_f1",
                     "realism", "rtf"):
            if name in wanted:
                _timed(results, name, getattr(self, name))
        return {k: results[k] for k in METRICS if k in results}


