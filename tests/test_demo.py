"""The demo source and the FluidSynth renderer, with real music21 and real FluidSynth, tiny sizes."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from musegen import fluid
from musegen.data import demo
from musegen.data.demo import DemoSource
from musegen.instruments import INSTRUMENTS, find_instrument

N, SECONDS, RATE = 6, 2.0, 16000
KEY_RE = re.compile(r"\b[A-G]( flat| sharp)? (major|minor)\b")


def _source(root: Path, **kw) -> DemoSource:
    args = dict(num_clips=N, seed=0, clip_seconds=SECONDS, sample_rate=RATE, num_workers=1) | kw
    return DemoSource(str(root), **args)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    source = _source(root)
    return source, source.clips()


def _index(source: DemoSource) -> dict:
    return json.loads((source.directory / f"index-{source.num_clips}.json").read_text())


def _files(clips) -> list[Path]:
    return [Path(p) for c in clips for p in (c.path, c.midi)]


def test_audio_files_are_real_clips(built):
    _, clips = built
    assert len(clips) == N
    for clip in clips:
        audio, rate = sf.read(clip.path, dtype="float32")
        assert rate == RATE and audio.ndim == 1 and len(audio) == int(SECONDS * RATE)
        assert np.sqrt(np.mean(audio**2)) > 0.01, clip.path
        assert 0.85 < np.abs(audio).max() <= 0.9  # peak-normalised to -1 dBFS


def test_midi_is_aligned_ground_truth(built):
    from music21 import converter

    _, clips = built
    for clip in clips:
        inst = INSTRUMENTS[clip.label]
        pm = pretty_midi.PrettyMIDI(clip.midi)
        notes = [n for i in pm.instruments for n in i.notes]
        assert len(notes) >= demo.MIN_NOTES
        assert pm.instruments[0].program == inst.program
        for n in notes:
            assert inst.low <= n.pitch <= inst.high, (clip.midi, n)
            assert 0 <= n.start < n.end <= SECONDS + 1e-3, (clip.midi, n)
        assert min(n.start for n in notes) < 0.05  # the excerpt starts on a note
        parsed = converter.parse(clip.midi).flatten().notes
        assert {p.midi for n in parsed for p in n.pitches} == {n.pitch for n in notes}


def test_captions_labels_groups(built):
    source, clips = built
    entries = _index(source)["clips"]
    assert len({c.label for c in clips}) >= 5
    for clip, entry in zip(clips, entries, strict=True):
        assert find_instrument(clip.caption).name == clip.label, clip.caption
        assert entry["key"] in clip.caption and KEY_RE.search(clip.caption), clip.caption
        assert entry["tempo"] in clip.caption
        assert re.match(r"^(bach|essenFolksong|oneills1850)/", clip.group), clip.group


def test_captions_vary_in_wording_not_in_facts():
    piece = demo.Piece("essen", "essenFolksong/han1.abc", 17)
    plan = demo.Plan(0, piece, "violin", "slow", 70, fluid.default_soundfont(), 0)
    captions = {demo.caption(plan, "D minor", np.random.default_rng(s)) for s in range(60)}
    assert len(captions) >= 10
    assert all("violin" in c and "D minor" in c and "slow" in c for c in captions)


def test_second_call_renders_nothing(built, monkeypatch):
    source, clips = built
    mtimes = [p.stat().st_mtime_ns for p in _files(clips)]
    monkeypatch.setattr(demo, "render_clip", lambda *a: pytest.fail("rendered again"))
    start = time.perf_counter()
    again = _source(source.root).clips()
    assert time.perf_counter() - start < 2.0
    assert again == clips
    assert [p.stat().st_mtime_ns for p in _files(again)] == mtimes
    # clip k is the same whatever num_clips is: a smaller set is a prefix, read from disk
    assert _source(source.root, num_clips=3).clips() == clips[:3]


def test_interrupted_build_redoes_only_missing_clip(built, tmp_path, monkeypatch):
    source, clips = built
    rendered = []
    real = demo.render_clip
    monkeypatch.setattr(demo, "render_clip", lambda plan, *a: rendered.append(plan.k) or real(plan, *a))
    (source.directory / f"index-{N}.json").unlink()
    stem = Path(clips[2].path).with_suffix("")
    stem.with_suffix(".json").unlink()  # as if killed before the clip's marker was written
    assert _source(source.root).clips() == clips
    assert len(rendered) == 1


def test_same_seed_same_bytes_in_parallel(built, tmp_path):
    source, clips = built
    other = _source(tmp_path, num_workers=2).clips()
    assert [(c.caption, c.label, c.group) for c in other] == [(c.caption, c.label, c.group) for c in clips]
    for a, b in zip(_files(clips), _files(other), strict=True):
        assert a.name == b.name and a.read_bytes() == b.read_bytes(), a.name


def test_other_seed_other_clips(built, tmp_path):
    _, clips = built
    other = _source(tmp_path, seed=1, num_clips=3).clips()
    assert [c.group for c in other] != [c.group for c in clips[:3]]
    assert [c.caption for c in other] != [c.caption for c in clips[:3]]


def test_skipped_plans_are_replaced_and_reported(tmp_path, monkeypatch):
    def fake(plan, out_dir, *_):
        if plan.k % 2 == 0:
            raise demo.SkipClip("odd piece")
        for suffix in (".wav", ".mid"):
            (Path(out_dir) / f"clip_{plan.k:05d}{suffix}").write_bytes(b"x")
        return {"k": plan.k, "audio": f"clip_{plan.k:05d}.wav", "midi": f"clip_{plan.k:05d}.mid",
                "caption": "c", "label": plan.instrument, "group": plan.piece.group}

    monkeypatch.setattr(demo, "render_clip", fake)
    source = _source(tmp_path, num_clips=4)
    source.directory.mkdir(parents=True)
    clips = source.clips()
    assert [Path(c.path).name for c in clips] == [f"clip_{k:05d}.wav" for k in (1, 3, 5, 7)]
    assert [s["reason"] for s in _index(source)["skipped"]] == ["odd piece"] * 4


def test_wrong_arguments_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="banjo"):
        DemoSource(str(tmp_path), instruments=["banjo"])
    with pytest.raises(ValueError, match="nope.sf2"):
        DemoSource(str(tmp_path), soundfonts=[str(tmp_path / "nope.sf2")])


def _note(pitch: int, program: int = 0, start: float = 0.0, end: float = 1.0) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program)
    inst.notes.append(pretty_midi.Note(100, pitch, start, end))
    pm.instruments.append(inst)
    return pm


@pytest.mark.parametrize("soundfont", fluid.available_soundfonts())
def test_render_a4_is_440_hz(soundfont):
    audio = fluid.render(_note(69), 22050, soundfont)
    assert audio.dtype == np.float32 and len(audio) == 2 * 22050  # 1 s note + 1 s release
    assert abs(np.abs(audio).max() - 10 ** (-1 / 20)) < 1e-3
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak = np.fft.rfftfreq(len(audio), 1 / 22050)[spectrum.argmax()]
    assert abs(peak - 440.0) < 5.0, peak
    assert np.array_equal(audio, fluid.render(_note(69), 22050, soundfont))


def test_render_is_aligned_and_independent_of_history():
    late = fluid.render(_note(60, start=0.5), 22050)
    onset = np.argmax(np.abs(late) > 0.01) / 22050
    assert 0.5 <= onset < 0.53
    first = fluid.render(_note(72, program=40), 22050)
    fluid.render(_note(40, program=24, end=2.0), 22050)
    assert np.array_equal(first, fluid.render(_note(72, program=40), 22050))


def test_missing_soundfont_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "gone.sf2")
    with pytest.raises(fluid.FluidSynthError, match="gone.sf2"):
        fluid.render(_note(69), 22050, missing)


def test_meter_midi_cannot_store_is_left_out_and_the_clip_still_writes(tmp_path):
    """Some folk tunes are in 3/3 or 2/6: MIDI only stores power-of-two denominators."""
    piece = demo.Piece("essen", "essenFolksong/han1.abc", 17)
    plan = demo.Plan(0, piece, "flute", "moderate", 100, fluid.default_soundfont(), 0)
    seg = [(0.0, 1.0, 72), (1.0, 2.0, 74), (2.0, 3.0, 76)]
    for meter, kept in (((3, 3), False), ((2, 6), False), ((6, 8), True)):
        pm = demo._to_midi(seg, 0, plan, (0, "major"), meter, np.random.default_rng(0))
        pm.write(str(tmp_path / "x.mid"))
        assert len(pretty_midi.PrettyMIDI(str(tmp_path / "x.mid")).instruments[0].notes) == 3
        assert bool(pm.time_signature_changes) == kept
