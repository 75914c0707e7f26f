"""The Python API (musegen.load -> MusicModel.generate -> Music) on a smoke checkpoint: batched prompts
give each prompt the audio it gets alone, files as generate.py writes them, players for notebooks."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import musegen
from musegen.features import AudioError


@pytest.fixture(scope="module")
def model(smoke_run):
    return musegen.load(smoke_run["ckpt"], device="cpu")


@pytest.fixture(scope="module")
def reference(smoke_run):
    return next((smoke_run["root"] / "data" / "demo").rglob("*.wav"))


def test_a_batch_of_prompts_gives_each_prompt_its_own_single_call_frames(model, reference):
    prompts = ["calm piano melody", "fast violin tune", None]
    music = model.generate(prompts, duration=1.5, seed=3, audio=[None, reference, None], progress=False)
    assert music.waveforms.shape == (3, round(1.5 * music.sample_rate)) and music.waveforms.dtype == np.float32
    assert music.prompts == prompts
    for i, (prompt, audio) in enumerate(zip(prompts, [None, reference, None])):
        alone = model.generate(prompt, duration=1.5, seed=3, audio=audio, progress=False)
        np.testing.assert_allclose(music.frames[i], alone.frames[0], atol=1e-4)
        np.testing.assert_allclose(music.waveforms[i], alone.waveforms[0], atol=1e-4)
    assert not np.allclose(music.frames[0], music.frames[1])


def test_variations_are_the_next_seeds_and_same_seed_same_samples(model):
    music = model.generate("calm piano melody", duration=1.0, seed=5, num_samples=2, progress=False)
    assert [m["seed"] for m in music.metadata] == [5, 6]
    np.testing.assert_allclose(music.frames[1], model.generate("calm piano melody", duration=1.0, seed=6,
                                                               progress=False).frames[0], atol=1e-4)
    again = model.generate("calm piano melody", duration=1.0, seed=5, num_samples=2, progress=False)
    assert np.array_equal(music.waveforms, again.waveforms)
    assert not np.allclose(music.frames[0], music.frames[1])


def test_save_writes_what_waveforms_hold_and_notebooks_get_one_player_per_item(model, tmp_path):
    calls = []
    music = model.generate(["calm piano melody", "fast violin tune"], duration=1.0,
                           progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, len(calls) + 1))
    written = music.save(tmp_path)
    assert [p["wav"].split("/")[-1] for p in written] == ["calm-piano-melody-s0.wav", "fast-violin-tune-s0.wav"]
    for item, paths in zip(music.waveforms, written):
        y, sr = sf.read(paths["wav"], dtype="float32")
        assert sr == music.sample_rate and len(y) == len(item)
        np.testing.assert_allclose(y, item, atol=1 / 2**15 + 1e-6)   # 16-bit PCM
        assert {"mp3", "mid", "json"} <= set(paths)
        assert json.loads(Path(paths["json"]).read_text())["checkpoint_sha256"]
    players = music._repr_html_()
    assert players.count("<audio controls") == 2 and "fast violin tune" in players


@pytest.mark.parametrize("kwargs,match", [
    (dict(audio=["a.wav"]), "audio: 1 values for 2 prompts"),
    (dict(duration=0), "duration"),
    (dict(temperature=-1), "temperature"),
    (dict(num_samples=0), "num_samples"),
    (dict(top_k=2.5), r"top_k must be an integer >= 1 or null, got 2\.5"),   # was a torch traceback
    (dict(min_note_frames=2.5), r"min_note_frames must be an integer >= 1 or null, got 2\.5"),   # was accepted
    (dict(top_k=True), "top_k must be an integer"),
])
def test_bad_arguments_are_named(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate(["calm piano", "fast violin"], **{"duration": 1.0, **kwargs})


def test_unusable_reference_audio_is_named(model, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    with pytest.raises(AudioError, match="broken.wav"):
        model.generate("calm piano", duration=1.0, audio=broken)


def test_a_seed_per_prompt_gives_each_prompt_its_own_stream(model):
    prompts = ["calm piano melody", "calm piano melody"]
    music = model.generate(prompts, duration=1.0, seed=[7, 11], num_samples=2, progress=False)
    assert [m["seed"] for m in music.metadata] == [7, 8, 11, 12]
    alone = model.generate("calm piano melody", duration=1.0, seed=11, progress=False)
    np.testing.assert_allclose(music.frames[2], alone.frames[0], atol=1e-4)
    assert not np.allclose(music.frames[0], music.frames[2])   # one prompt twice, two streams
    with pytest.raises(ValueError, match="seed: 1 values for 2 prompts"):
        model.generate(prompts, duration=1.0, seed=[1], progress=False)
    with pytest.raises(ValueError, match="seed: 1.5 is not an integer"):
        model.generate(prompts, duration=1.0, seed=[1, 1.5], progress=False)
