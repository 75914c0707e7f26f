"""The quality metrics on cases with a known answer, and evaluate.py end to end on a smoke checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch
from conftest import run_script
from hydra.utils import instantiate
from omegaconf import OmegaConf

from musegen.apps.evaluate import build_datamodule, training_data_config
from musegen.audio import Synthesizer
from musegen.eval.baselines import argmax_notes, linear_skill, pyin_notes
from musegen.eval.harness import AudioPath, next_segment_skill, prompt_samples
from musegen.eval.metrics import (
    InstrumentClassifier,
    fad,
    frechet_distance,
    mel_embedding,
    mel_fad,
    midi_notes,
    note_f1,
    pitch_class_profile,
    pitch_fidelity,
    pooled_embedding,
    profile_correlation,
    rtf,
    skill,
)
from musegen.eval.realism import note_statistics
from musegen.eval.run import METRICS, EvalSettings, Evaluation
from musegen.features import FeatureConfig, extract
from musegen.generation import Generator
from musegen.model.heads import last_frame
from musegen.model.normaliser import Normaliser
from musegen.model_card import CARD_FILE
from musegen.model_card_markdown import fmt

CONF = Path(__file__).resolve().parents[1] / "conf"

FEATS = FeatureConfig()
SETTINGS = dict(num_prompts=1, seconds=1.0, max_test_clips=2, guidance=None, temperature=None, top_k=None, top_p=None,
                min_p=None, pitch_temperature=None, min_note_frames=None, seed=0,
                write_samples=False, labels=None, max_labels=None, rtf_repeats=1, realism_seconds=4.0,
                long_seconds=8.0, fad_samples=2, metrics=None)
SR = FEATS.sample_rate


# ---------------------------------------------------------------------------- skill
class RampModel(torch.nn.Module):
    """A stand-in for MuseModel on ramp data (frame t = t * slope), with the model's interface as the
    metrics use it: `gain` 1 is the perfect predictor, 0 is persistence (repeat the last frame), 0.5
    halfway (error 1/4 of persistence's)."""

    n_mfcc = 2

    def __init__(self, slope: torch.Tensor, segment: int, gain: float) -> None:
        super().__init__()
        self.slope, self.segment_frames, self.gain = slope, segment, gain
        self.out_dim = len(slope)
        self.normaliser = Normaliser(len(slope))  # mean 0, std 1: normalised units are raw units

    def condition(self, text, reference):
        return torch.zeros(len(text), 1)

    def target(self, target):
        return target

    def mean(self, context, mask, cond):
        steps = torch.arange(1, self.segment_frames + 1, dtype=torch.float32)[None, :, None]
        return last_frame(context, mask)[:, None, :] + self.gain * steps * self.slope

    def persistence(self, context, mask):
        return last_frame(context, mask)[:, None, :].expand(-1, self.segment_frames, -1)


def ramp_batches(slope: torch.Tensor, context: int = 6, segment: int = 4, starts=(6, 9, 20)):
    frames = torch.arange(40, dtype=torch.float32)[:, None] * slope
    ctx = torch.stack([frames[s - context:s] for s in starts])
    mask = torch.ones(len(starts), context, dtype=torch.bool)
    mask[0, :2] = False  # a partly empty context: persistence must use the last *real* frame
    yield {"context": ctx, "context_mask": mask, "target": torch.stack([frames[s:s + segment] for s in starts]),
           "text": torch.zeros(len(starts), 3), "reference": torch.zeros(len(starts), 8)}


@pytest.mark.parametrize("gain, expected", [(1.0, 1.0), (0.0, 0.0), (0.5, 0.75)])
def test_next_segment_skill_on_ramps(gain, expected):
    slope = torch.tensor([1.0, -0.5, 2.0])  # the third dimension is chroma: not scored
    r = next_segment_skill(RampModel(slope, 4, gain), ramp_batches(slope))
    assert r["skill"] == pytest.approx(expected, abs=1e-9)
    assert r["persistence_mse"] > 0


def test_skill_formula():
    assert float(skill(0.0, 2.0)) == 1.0
    assert float(skill(2.0, 2.0)) == 0.0
    assert float(skill(4.0, 2.0)) == -1.0


# ---------------------------------------------------------------------------- profiles
def test_pitch_class_profiles_correlate_one_when_identical():
    rng = np.random.default_rng(0)
    chroma = rng.random((50, 12))
    p = pitch_class_profile(chroma)
    assert p.shape == (12,) and np.allclose(p, chroma.mean(0))
    assert profile_correlation(p, p) == 1.0
    assert profile_correlation(p, 3 * p + 1) == pytest.approx(1.0)
    assert profile_correlation(p, -p) == pytest.approx(-1.0)
    assert profile_correlation(p, np.full(12, 0.5)) == 0.0  # a flat profile has no key
    with pytest.raises(ValueError):
        profile_correlation(p, p[:11])


# ---------------------------------------------------------------------------- FAD
def test_frechet_distance_known_values():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(8, dtype=np.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-5)
    b = rng.standard_normal((30, 8)) * 3
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    assert frechet_distance(a[:3], a[:3]) == pytest.approx(0.0, abs=1e-6)  # fewer samples than dims


def test_fad_of_identical_clips_is_zero_and_noise_is_far():
    rng = np.random.default_rng(2)
    clips = [rng.standard_normal((30, 32)) + i for i in range(5)]
    emb = pooled_embedding(clips[0])
    assert emb.shape == (64,) and np.allclose(emb[:32], clips[0].mean(0)) and np.allclose(emb[32:], clips[0].std(0))
    assert fad(clips, clips) == pytest.approx(0.0, abs=1e-6)
    assert fad(clips, clips, mean=np.zeros(32), std=np.ones(32)) == pytest.approx(0.0, abs=1e-6)
    assert fad([c + 10 for c in clips], clips) > 100


def _tones(n: int, seed: int, smear: float = 0.0, seconds: float = 2.0) -> list[np.ndarray]:
    """Decaying harmonic tones at random pitches; `smear` adds broadband noise of that share of the RMS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    clips = []
    for _ in range(n):
        f0 = 110.0 * 2 ** rng.uniform(0, 2)
        y = sum(np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 6.3)) / h for h in range(1, 7)) * np.exp(-1.5 * t)
        y = y + smear * np.sqrt(np.mean(y ** 2)) * rng.standard_normal(len(t)) * np.exp(-1.5 * t)
        clips.append(y.astype(np.float32))
    return clips


def test_mel_fad_hears_partials_smeared_into_noise_and_ignores_level():
    """The log-mel FAD compares written audio as heard: two draws of clean harmonic tones lie close,
    the same kind of tones with broadband noise between their partials lie far, and a quieter copy
    of a set (written files are peak-normalised) is the same set."""
    clean, other, smeared = _tones(24, 0), _tones(24, 1), _tones(24, 2, smear=0.5)
    emb = mel_embedding(clean[:1] + [np.zeros(SR // 2, np.float32)], FEATS)
    assert emb.shape == (2, 128)   # two whole 1 s windows of a 2 s clip; a 0.5 s clip has none
    with pytest.raises(ValueError, match="no clip lasts one"):
        mel_embedding([np.zeros(SR // 2, np.float32)], FEATS)
    assert mel_fad(clean, clean, FEATS) == pytest.approx(0.0, abs=1e-6)
    assert mel_fad([0.05 * y for y in clean], clean, FEATS) == pytest.approx(0.0, abs=1e-6)
    near, far = mel_fad(other, clean, FEATS), mel_fad(smeared, clean, FEATS)
    assert far > 5 * near, (near, far)


# ---------------------------------------------------------------------------- notes
REF = [(0.0, 0.5, 60, 80), (0.5, 1.0, 64, 80), (1.0, 1.5, 67, 80), (1.5, 2.0, 72, 80)]


def test_note_f1_known_values():
    assert note_f1(REF, REF) == 1.0
    assert note_f1([], []) == 1.0
    assert note_f1([], REF) == 0.0
    assert note_f1(REF[:2], REF) == pytest.approx(2 / 3)
    assert note_f1([(s + 0.03, e + 0.5, p, v) for s, e, p, v in REF], REF) == 1.0  # 30 ms late, offsets ignored
    assert note_f1([(s + 0.1, e, p, v) for s, e, p, v in REF], REF) == 0.0         # 100 ms late
    assert note_f1([(s, e, p + 12, v) for s, e, p, v in REF], REF) == 0.0          # wrong octave


def tones(notes, seconds: float) -> np.ndarray:
    """Harmonic tones with a decaying envelope, one per note, as a stand-in recording."""
    y = np.zeros(int(seconds * SR), dtype=np.float32)
    for start, end, pitch, _ in notes:
        t = np.arange(int((end - start - 0.02) * SR)) / SR
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        tone = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 5)) * np.exp(-2 * t)
        y[int(start * SR):int(start * SR) + len(t)] += 0.3 * tone.astype(np.float32)
    return y


def test_midi_ground_truth_and_pyin_baseline(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    inst.notes = [pretty_midi.Note(80, p, s, e) for s, e, p, _ in REF]
    pm.instruments.append(inst)
    pm.write(str(tmp_path / "ref.mid"))
    ref = midi_notes(tmp_path / "ref.mid")
    assert note_f1(ref, REF) == 1.0
    assert len(midi_notes(tmp_path / "ref.mid", max_seconds=1.2)) == 3
    est = pyin_notes(tones(REF, 2.0), FEATS, fmin=200.0, fmax=1100.0)
    assert note_f1(est, ref) >= 0.75


def test_chroma_argmax_baseline_transcribes_clean_tones():
    notes = argmax_notes(extract(tones(REF[:3], 1.5), FEATS), FEATS, register=64)
    assert [p for _, _, p, _ in notes] == [60, 64, 67]
    assert note_f1(notes, REF[:3]) == 1.0


# ---------------------------------------------------------------------------- pitch fidelity
def test_pitch_fidelity_of_harmonic_resynthesis_is_high_and_random_chroma_low():
    rng = np.random.default_rng(3)
    frames = extract(tones([(0.0, 3.0, 57, 80)], 3.0), FEATS)  # a real MFCC envelope
    classes = np.repeat(rng.integers(0, 12, len(frames) // 8 + 1), 8)[: len(frames)]
    frames[:, FEATS.n_mfcc:] = np.eye(12)[classes] * 0.9 + 0.05
    audio = Synthesizer(FEATS).render(frames, mode="harmonic", register=60)
    assert pitch_fidelity(frames, audio, FEATS) >= 0.85
    other = frames.copy()
    other[:, FEATS.n_mfcc:] = rng.random((len(frames), 12))
    assert pitch_fidelity(other, audio, FEATS) <= 0.3
    assert pitch_fidelity(frames, np.zeros_like(audio), FEATS) == 0.0  # silence sounds no note


# ---------------------------------------------------------------------------- classifier, rtf
def test_instrument_classifier_separates_timbres():
    rng = np.random.default_rng(4)

    def clip(kind: str) -> np.ndarray:
        t = np.arange(SR // 2) / SR
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        n_h = 1 if kind == "flute" else 12
        y = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, n_h + 1))
        return extract((0.2 * y + 0.01 * rng.standard_normal(len(t))).astype(np.float32), FEATS)

    train = [(clip(k), k) for k in ("flute", "violin") for _ in range(6)]
    test = [(clip(k), k) for k in ("flute", "violin") for _ in range(3)]
    clf = InstrumentClassifier().fit([f for f, _ in train], [y for _, y in train])
    assert clf.classes == ["flute", "violin"]
    assert clf.accuracy([f for f, _ in test], [y for _, y in test]) == 1.0
    with pytest.raises(ValueError, match="2 classes"):
        InstrumentClassifier().fit([f for f, _ in train[:2]], ["flute", "flute"])


def test_rtf_and_settings_fail_fast():
    assert rtf(10.0, 2.0) == 5.0
    with pytest.raises(ValueError, match="wall_seconds"):
        rtf(1.0, 0.0)
    with pytest.raises(ValueError, match="num_prompts"):
        EvalSettings(**{**SETTINGS, "num_prompts": 0})
    with pytest.raises(ValueError, match="max_test_clips"):
        EvalSettings(**{**SETTINGS, "max_test_clips": 1})
    with pytest.raises(ValueError, match="max_labels"):
        EvalSettings(**{**SETTINGS, "max_labels": 0})


# ---------------------------------------------------------------------------- evaluate.py
def test_evaluate_py_end_to_end(tmp_path, smoke_run):

    out_dir = tmp_path / "eval"
    out = run_script("evaluate.py", f"ckpt={smoke_run['ckpt']}", f"hydra.run.dir={out_dir}", "settings.num_prompts=1",
                     "settings.seconds=1", "settings.max_test_clips=2", "settings.max_labels=2", "rtf.duration=1",
                     "settings.rtf_repeats=2", "settings.write_samples=false",
                     "settings.realism_seconds=4", "settings.long_seconds=8")
    results = json.loads((out_dir / "metrics.json").read_text())
    assert set(results["metrics"]) == set(METRICS)
    for name in METRICS:
        entry = results["metrics"][name]
        assert isinstance(entry["value"], float) and math.isfinite(entry["value"]), (name, entry)
        assert all(isinstance(v, float) and math.isfinite(v) for v in entry["baselines"].values()), (name, entry)
    assert results["metrics"]["skill"]["baselines"]["persistence"] == 0.0
    assert set(results["metrics"]["skill"]["baselines"]) == {"persistence", "ridge"}
    assert set(results["metrics"]["fad"]["baselines"]) == {"floor_train_vs_test", "train_same_size",
                                                           "train_same_size_resynthesised", "white_noise"}
    assert set(results["metrics"]["mel_fad"]["baselines"]) == {"floor_train_vs_test", "train_same_size",
                                                               "train_same_size_resynthesised", "white_noise"}
    assert results["sampling"]["guidance"] == results["metrics"]["prompt_adherence"]["details"]["guidance"]
    adherence = results["metrics"]["prompt_adherence"]
    assert len(adherence["details"]["labels"]) == 2
    heard_as = adherence["details"]["heard_as"]   # one prompt per label, heard as some instrument
    assert set(heard_as) == set(adherence["details"]["labels"])
    assert all(sum(heard.values()) == 1 and set(heard) <= set(adherence["details"]["classes"])
               for heard in heard_as.values())
    assert adherence["value"] == sum(heard.get(label, 0) for label, heard in heard_as.items()) / 2
    assert results["data"]["config_from"].endswith(".hydra/config.yaml")
    assert "prompt_adherence" in out.stdout and "metrics.json" in out.stdout
    assert (out_dir / "rtf").is_dir() and len(results["metrics"]["rtf"]["details"]["wall_seconds"]) == 2
    realism = results["metrics"]["realism"]["details"]
    assert set(realism["descriptors"]) == {"generated", "reference", "real"}
    assert realism["long_generation"]["last_window"]["onsets_per_second"] is not None
    long_labels = realism["long_generation"]["labels"]  # one long generation per evaluated label
    assert long_labels and set(realism["long_generation"]["per_label"]) == set(long_labels)
    assert realism["notes"]["ground_truth_midi"]["notes_per_second"] > 0
    assert realism["notes"]["test_frames_transcribed"]["median_note_seconds"] > 0
    assert realism["notes"]["clips"]["test_clips_with_midi"] == results["data"]["test_clips"]
    durations = realism["notes"]["durations"]   # pooled over the clips each median row reads
    assert set(durations) == {"generated", "ground_truth_midi", "test_frames_transcribed"}
    assert durations["ground_truth_midi"]["q25"] <= durations["ground_truth_midi"]["median"] > 0
    assert durations["ground_truth_midi"]["notes"] >= results["data"]["test_clips"]
    # the checkpoint's model card now shows these figures beside their baselines
    card = (smoke_run["ckpt"].parent / CARD_FILE).read_text()
    assert str((out_dir / "metrics.json").resolve()) in card and "Not evaluated yet" not in card
    assert results["vocoder"] is None and "audio through the analytic synthesis" in card
    for name in METRICS:
        entry = results["metrics"][name]
        assert f"| {name} | {fmt(entry['value'])} | " in card, name
        assert all(f"{k} {fmt(v)}" in card for k, v in entry["baselines"].items()), name


def test_linear_baseline_learns_a_linear_continuation():
    """Ramps continue linearly from the last frames: ridge regression predicts them almost exactly,
    far better than persistence."""
    slope = torch.tensor([1.0, -0.5, 2.0])
    model = RampModel(slope, 4, 0.0)
    train = list(ramp_batches(slope, starts=tuple(range(6, 36))))
    value = linear_skill(model, train, ramp_batches(slope), frames=2, alpha=1e-6)
    assert value > 0.99


def test_prompt_samples_draw_each_sample_from_its_own_stream(smoke_run):
    """Samples of different labels used to share seeds (one per index within a label), so the
    evaluation's samples shared their sampling noise across instruments."""
    gen = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu")
    export = instantiate(OmegaConf.load(CONF / "export" / "default.yaml"))
    path = AudioPath(Synthesizer(gen.features, n_iter=2), export)
    labels = ["piano", "violin"]
    samples = prompt_samples(gen, labels, 3.0, 2, 1.0, path, seed=5)
    assert [s.meta["seed"] for s in samples] == [5, 6, 7, 8]
    assert [s.label for s in samples] == ["piano", "piano", "violin", "violin"]
    again = prompt_samples(gen, labels, 3.0, 2, 1.0, path, seed=5)   # the same streams: paired calls
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(samples, again))
    # a label's samples come from one batched call, each with the frames of its prompt and seed alone
    alone = gen.generate(prompt=samples[3].meta["prompt"], duration=1.0, guidance=3.0, seed=8).frames[0]
    np.testing.assert_allclose(samples[3].frames, alone, atol=1e-4)


def test_note_references_read_every_test_clip_not_only_the_evaluated_ones(tmp_path, smoke_run):
    """The ground-truth note rate and length came from the evaluated subset alone (16 clips by
    default), whose median moved with which clips were drawn; they now read every test clip."""
    gen = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu")
    data = {**training_data_config(smoke_run["ckpt"]), "val_fraction": 0.1, "test_fraction": 0.5}
    dm = build_datamodule(data, gen)
    export = instantiate(OmegaConf.load(CONF / "export" / "default.yaml"))
    evaluation = Evaluation(gen, dm, EvalSettings(**{**SETTINGS, "max_labels": 1}), Synthesizer(gen.features, n_iter=2),
                            export, tmp_path)
    assert len(evaluation.test_ids) > len(evaluation.eval_ids) == 2
    notes = evaluation.realism()["details"]["notes"]
    assert notes["clips"]["test_clips_with_midi"] == len(evaluation.test_ids)
    spans = [len(evaluation.clip_audio(i)) / gen.features.sample_rate for i in evaluation.test_ids]
    truth = [note_statistics(midi_notes(dm.cache.midi[i], span), span)["notes_per_second"]
             for i, span in zip(evaluation.test_ids, spans)]
    assert notes["ground_truth_midi"]["notes_per_second"] == pytest.approx(float(np.median(truth)))


def test_fad_makes_up_its_set_with_more_prompt_samples_on_fresh_seeds(tmp_path, smoke_run):
    """FAD compared the adherence samples alone, a set so small that real training clips scored about
    twice the floor; it now compares `fad_samples` clips, made up with more prompt samples whose
    labels take turns and whose seeds no adherence sample used."""
    gen = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu")
    dm = build_datamodule(training_data_config(smoke_run["ckpt"]), gen)
    export = instantiate(OmegaConf.load(CONF / "export" / "default.yaml"))
    settings = EvalSettings(**{**SETTINGS, "max_labels": 2, "fad_samples": 7})
    evaluation = Evaluation(gen, dm, settings, Synthesizer(gen.features, n_iter=2), export, tmp_path)
    evaluation.prompt_adherence()
    adherence_seeds = {s.meta["seed"] for s in evaluation.generated}
    more = evaluation._more_prompt_samples(5)
    assert [s.label for s in more] == [evaluation.prompted[i % 2] for i in range(5)]
    assert len({s.meta["seed"] for s in more}) == 5 and not adherence_seeds & {s.meta["seed"] for s in more}
    assert evaluation._more_prompt_samples(0) == []
    entry = evaluation.fad()
    assert entry["details"]["generated"] == 7 and entry["details"]["adherence_samples"] == 2
    assert entry["details"]["train_same_size_clips"] == min(7, len(evaluation.train_ids))
    assert math.isfinite(entry["value"]) and math.isfinite(entry["details"]["adherence_samples_only"])
    with pytest.raises(ValueError, match="fad_samples"):
        EvalSettings(**{**SETTINGS, "fad_samples": 1})
