"""Realism descriptors on synthetic signals whose answer is known, and the held-out prompt set."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pretty_midi
import pytest

from musegen.data.demo import STYLE_NOUN, TEMPLATES, TEMPO_BPM, key_name
from musegen.data.sources import CAPTION_TEMPLATES
from musegen.eval.metrics import midi_notes
from musegen.eval.prompts import HELD_OUT_PROMPTS
from musegen.eval.realism import (
    MUSICAL,
    chroma_change,
    chroma_peakiness,
    clip_folds,
    descriptors,
    log_spectral_distance,
    note_durations,
    note_statistics,
    onset_times,
    pitch_class_match,
    realism_report,
    rms_variation,
    two_sample_accuracy,
    window_descriptors,
)
from musegen.features import FeatureConfig
from musegen.instruments import INSTRUMENTS, find_instrument

FEATS = FeatureConfig()
SR = FEATS.sample_rate
SCALE = (60, 62, 64, 65, 67, 69, 71, 72)


def notes_signal(rate: float = 2.0, seconds: float = 8.0, pitches=SCALE, shift: int = 0,
                 rng: np.random.Generator | None = None, offset: float = 0.0) -> np.ndarray:
    """Plucked harmonic tones (3 partials, exponential decay), one every 1/rate s from `offset` s.

    With `rng`, each note's pitch is drawn at random from 55..79 instead of cycling `pitches`.
    """
    n, step = int(seconds * SR), int(round(SR / rate))
    t = np.arange(step) / SR
    y = np.zeros(n)
    for k, start in enumerate(range(int(round(offset * SR)), n, step)):
        pitch = (int(rng.integers(55, 80)) if rng is not None else pitches[k % len(pitches)]) + shift
        f = 440.0 * 2.0 ** ((pitch - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3)) * np.exp(-4.0 * t)
        m = min(step, n - start)
        y[start:start + m] += tone[:m]
    return (0.3 * y).astype(np.float32)


def steady_tone(seconds: float = 8.0, hz: float = 440.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def white_noise(seconds: float = 8.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture(scope="module")
def measured() -> dict[str, dict[str, float]]:
    return {name: descriptors(y, SR, FEATS) for name, y in
            (("notes", notes_signal(offset=0.25)), ("tone", steady_tone()), ("noise", white_noise()))}


# ---------------------------------------------------------------------------- descriptors
def test_onsets_per_second_counts_the_notes(measured):
    assert measured["notes"]["onsets_per_second"] == 2.0      # 8 notes in each 4 s window
    assert measured["tone"]["onsets_per_second"] <= 0.5


def test_onset_times_are_the_note_starts():
    times = onset_times(notes_signal(rate=2.0, seconds=4.0, offset=0.25), FEATS)
    np.testing.assert_allclose(times, 0.25 + 0.5 * np.arange(8), atol=0.05)


def test_windows_count_each_onset_once():
    y = notes_signal(rate=3.0, seconds=8.0, offset=0.1)
    rows = window_descriptors(y, FEATS)
    assert len(rows) == 2                                   # two 4 s windows
    assert sum(r["onsets_per_second"] * 4.0 for r in rows) == pytest.approx(len(onset_times(y, FEATS)))


def test_steady_tone_is_still_and_peaked(measured):
    tone, notes = measured["tone"], measured["notes"]
    assert tone["chroma_change"] < 0.01
    assert tone["chroma_change"] < notes["chroma_change"]
    assert tone["chroma_peakiness"] > 0.6
    assert tone["rms_cv"] < 0.1 < notes["rms_cv"]          # a held tone does not move; plucked notes decay
    assert tone["spectral_flux"] < notes["spectral_flux"]


def test_white_noise_is_flat_and_unpeaked(measured):
    noise, tone = measured["noise"], measured["tone"]
    assert noise["chroma_peakiness"] < 0.2                  # near 1/12: every pitch class alike
    assert noise["chroma_peakiness"] < measured["notes"]["chroma_peakiness"]
    assert noise["spectral_flatness"] > 0.3 > 100 * tone["spectral_flatness"]


def test_chroma_definitions_on_known_frames():
    one_hot = np.eye(12)[[0, 1, 0, 1]] * 0.5                 # scale must not matter
    voiced = np.ones(4, bool)
    assert chroma_change(one_hot, voiced) == pytest.approx(2 / 12)
    assert chroma_change(np.eye(12)[[3, 3, 3]], np.ones(3, bool)) == 0.0
    assert chroma_peakiness(one_hot, voiced) == 1.0
    assert chroma_peakiness(np.ones((4, 12)), voiced) == pytest.approx(1 / 12)
    unvoiced_pairs = np.array([True, False, True, False])     # no two consecutive voiced frames
    assert math.isnan(chroma_change(one_hot, unvoiced_pairs))


def test_descriptors_hold_every_named_measure(measured):
    d = measured["notes"]
    assert set(MUSICAL) <= set(d)
    assert {"mfcc00_mean", "mfcc19_std", "mfcc05_delta_std"} <= set(d)
    assert len(d) == len(MUSICAL) + 3 * FEATS.n_mfcc


def test_rms_variation_is_gain_independent():
    y = notes_signal(seconds=4.0)
    assert rms_variation(0.1 * y, FEATS) == pytest.approx(rms_variation(y, FEATS), rel=1e-4)
    assert rms_variation(steady_tone(4.0), FEATS) < 0.1 < rms_variation(y, FEATS)


def test_silence_gives_nan_not_an_error():
    d = descriptors(np.zeros(4 * SR, np.float32), SR, FEATS)
    assert math.isnan(d["chroma_peakiness"]) and math.isnan(d["rms_cv"])
    assert d["onsets_per_second"] == 0.0


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, SR), np.float32), "1-D"),
    (np.full(SR, np.nan, np.float32), "NaN"),
    (np.zeros(100, np.float32), "at least"),
])
def test_bad_audio_is_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        descriptors(bad, SR, FEATS)


def test_wrong_sample_rate_is_rejected():
    with pytest.raises(ValueError, match="sample_rate"):
        descriptors(steady_tone(1.0), 16000, FEATS)


# ---------------------------------------------------------------------------- two-sample test
@pytest.fixture(scope="module")
def note_sets() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(1)
    return [notes_signal(rng=rng) for _ in range(10)], [notes_signal(rng=rng) for _ in range(10)]


def test_same_process_is_indistinguishable(note_sets):
    a, b = note_sets
    assert 0.25 <= two_sample_accuracy(a, b, SR, FEATS) <= 0.75


def test_sines_and_noise_are_told_apart():
    rng = np.random.default_rng(2)
    notes = [notes_signal(seconds=4.0, rng=rng) for _ in range(6)]
    noise = [white_noise(4.0, seed) for seed in range(6)]
    assert two_sample_accuracy(notes, noise, SR, FEATS) >= 0.95


def test_two_sample_needs_enough_clips(note_sets):
    with pytest.raises(ValueError, match="folds"):
        two_sample_accuracy(note_sets[0][:3], note_sets[1], SR, FEATS, folds=5)
    with pytest.raises(ValueError, match="folds"):
        two_sample_accuracy(note_sets[0], note_sets[1], SR, FEATS, folds=1)


def test_folds_keep_each_clip_on_one_side():
    groups = np.repeat(np.arange(20), 3)                   # 20 clips of 3 windows
    labels = (groups >= 10).astype(int)
    splits = clip_folds(groups, labels, folds=5, seed=0)
    assert len(splits) == 5
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested) == list(range(len(groups)))      # every window tested exactly once
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert set(labels[test]) == {0, 1}                   # both sets in every test fold


def test_report_is_plain_and_complete():
    rng = np.random.default_rng(3)
    a = [notes_signal(seconds=8.0, rng=rng) for _ in range(5)]
    b = [notes_signal(seconds=4.0, rng=rng) for _ in range(5)]
    noise = [white_noise(4.0, seed) for seed in range(5)]
    report = realism_report(a, b, FEATS, real=noise)
    json.dumps(report, allow_nan=False)
    assert set(report["descriptors"]) == {"generated", "reference", "real"}
    assert set(report["two_sample_accuracy"]) == {"generated_vs_reference", "generated_vs_real", "reference_vs_real"}
    assert report["two_sample_accuracy"]["generated_vs_real"] >= 0.95
    assert report["windows"] == {"generated": 10, "reference": 5, "real": 5}
    assert report["clips"] == {"generated": 5, "reference": 5, "real": 5}
    ratios = report["ratios_generated_over_reference"]
    assert set(MUSICAL) <= set(ratios) and not any(k.endswith("_mean") for k in ratios)
    medians = report["descriptors"]
    assert ratios["onsets_per_second"] == pytest.approx(
        medians["generated"]["onsets_per_second"] / medians["reference"]["onsets_per_second"])


# ---------------------------------------------------------------------------- resynthesis fidelity
def test_pitch_class_match_itself_and_transposed():
    y = notes_signal(seconds=4.0)
    assert pitch_class_match(y, y, SR, FEATS) == 1.0
    assert pitch_class_match(y, notes_signal(seconds=4.0, shift=5), SR, FEATS) < 0.2


def test_log_spectral_distance():
    y = notes_signal(seconds=4.0)
    assert log_spectral_distance(y, y, FEATS) == 0.0
    assert log_spectral_distance(y, np.concatenate([y, y[:1000]]), FEATS) == 0.0  # lengths aligned
    # 10x the amplitude is +2 in log10 power in every bin (noise puts every bin above the 80 dB floor)
    noise = white_noise(4.0)
    assert log_spectral_distance(noise, 10 * noise, FEATS) == pytest.approx(2.0, abs=1e-3)
    assert log_spectral_distance(y, notes_signal(seconds=4.0, shift=5), FEATS) > 0.5


# ---------------------------------------------------------------------------- notes
def test_note_statistics():
    notes = [(0.0, 0.5, 60, 80), (0.5, 0.75, 62, 80), (1.0, 2.0, 64, 80)]
    assert note_statistics(notes, seconds=4.0) == {"notes_per_second": 0.75, "median_note_seconds": 0.5}
    assert note_statistics(notes)["notes_per_second"] == pytest.approx(1.5)   # span = last end
    empty = note_statistics([], seconds=4.0)
    assert empty["notes_per_second"] == 0.0 and math.isnan(empty["median_note_seconds"])
    with pytest.raises(ValueError, match="start <= end"):
        note_statistics([(1.0, 0.5, 60, 80)])


def test_note_durations_pool_clips_and_tell_blips_from_a_short_median():
    even = [[(0.4 * k, 0.4 * k + 0.3, 60, 80) for k in range(10)]]             # ten 0.3 s notes
    # the same median from a spread of lengths: blips and long notes, as notes that end at a constant rate
    spread = [[(0.0, 0.05, 60, 80), (0.1, 0.15, 62, 80)], [(0.0, 0.3, 60, 80)],
              [(1.0, 1.6, 64, 80), (2.0, 2.9, 65, 80)]]
    a, b = note_durations(even), note_durations(spread)
    assert a["median"] == pytest.approx(0.3) and b["median"] == pytest.approx(0.3)
    assert a["notes"] == 10 and b["notes"] == 5          # pooled over the clips
    assert a["short_share"] == 0.0 and b["short_share"] == pytest.approx(0.4)
    assert a["q25"] == pytest.approx(0.3) and b["q25"] < 0.1 < 0.5 < b["q75"]
    assert b["mean"] == pytest.approx((0.05 + 0.05 + 0.3 + 0.6 + 0.9) / 5)
    assert note_durations([[], []]) == {"notes": 0}


def test_note_statistics_of_ground_truth_midi(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    inst.notes += [pretty_midi.Note(90, 60 + k, 0.5 * k, 0.5 * k + 0.4) for k in range(8)]
    pm.instruments.append(inst)
    pm.write(str(tmp_path / "x.mid"))
    stats = note_statistics(midi_notes(tmp_path / "x.mid", 4.0), seconds=4.0)
    assert stats["notes_per_second"] == 2.0
    assert stats["median_note_seconds"] == pytest.approx(0.4, abs=1e-3)


# ---------------------------------------------------------------------------- held-out prompts
def _caption_patterns() -> list[re.Pattern[str]]:
    """Every training caption the demo and file sources can produce, as full-match regexes."""
    words = sorted({w for i in INSTRUMENTS.values() for w in (i.name, *i.aliases)}, key=len, reverse=True)
    inst = "(?:" + "|".join(map(re.escape, words)) + ")s?"
    keys = "|".join(re.escape(key_name(pc, mode)) for pc in range(12) for mode in ("major", "minor"))
    fill = {"tempo": "|".join(TEMPO_BPM), "a_tempo": "a|an", "inst": inst, "key": keys,
            "noun": "|".join(map(re.escape, ("melody", "tune", *STYLE_NOUN.values())))}
    patterns = []
    for template in TEMPLATES:
        regex = re.escape(template)
        for name, alternatives in fill.items():
            regex = regex.replace(re.escape("{" + name + "}"), f"(?:{alternatives})")
        patterns.append(re.compile(regex, re.IGNORECASE))
    for template in CAPTION_TEMPLATES:
        patterns.append(re.compile(re.escape(template).replace(re.escape("{x}"), inst), re.IGNORECASE))
    return patterns


def test_held_out_prompts_are_no_training_caption():
    assert len(HELD_OUT_PROMPTS) >= 24 and len(set(HELD_OUT_PROMPTS)) == len(HELD_OUT_PROMPTS)
    patterns = _caption_patterns()
    assert patterns[0].fullmatch("fast violin folk song in B flat major")  # the check can fail
    assert patterns[-1].fullmatch("guitar playing")
    for prompt in HELD_OUT_PROMPTS:
        assert not any(p.fullmatch(prompt) for p in patterns), prompt
        # nor the templates' fixed words, which would make a wording half-familiar
        assert not re.search(r"\b(solo|playing|played on the|recording|sample|slow|moderate|fast)\b", prompt, re.I)


def test_held_out_prompts_name_every_demo_instrument():
    named = [find_instrument(p) for p in HELD_OUT_PROMPTS]
    assert None not in named
    counts = {name: sum(i.name == name for i in named) for name in INSTRUMENTS}
    assert min(counts.values()) >= 3, counts
