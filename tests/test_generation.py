"""Generation from a smoke checkpoint: the Python API, generate.py, and every bad input."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import music21
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, run_script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from musegen.apps.generate import generate_files
from musegen.checkpoint import CheckpointError
from musegen.features import AudioError
from musegen.generation import Generator


@pytest.fixture(scope="module")
def generator(smoke_run) -> Generator:
    return Generator.from_checkpoint(smoke_run["ckpt"], device="cpu")


@pytest.fixture(scope="module")
def reference(smoke_run) -> Path:
    return next((smoke_run["root"] / "data" / "demo").rglob("*.wav"))


def gen_cfg(tmp_path: Path, ckpt: Path, **overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[f"ckpt={ckpt}", f"out={tmp_path}", "duration=1.5",
                                             "export.render_midi=false", *[f"{k}={v}" for k, v in overrides.items()]])
    return cfg


def test_same_seed_same_frames_other_seed_differs(generator):
    a = generator.generate(prompt="calm piano melody", duration=1.0, seed=3).frames
    b = generator.generate(prompt="calm piano melody", duration=1.0, seed=3).frames
    c = generator.generate(prompt="calm piano melody", duration=1.0, seed=4).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_prompt_guidance_and_reference_change_the_output(generator, reference):
    kw = dict(duration=1.0, seed=0)  # the same random draws: only the conditioning differs
    piano = generator.generate(prompt="calm piano melody", **kw).frames
    drums = generator.generate(prompt="fast trumpet fanfare", **kw).frames
    unguided = generator.generate(prompt="calm piano melody", guidance=0.0, **kw).frames
    continued = generator.generate(prompt="calm piano melody", audio=reference, **kw).frames
    assert not np.allclose(piano, drums)
    assert not np.allclose(piano, unguided)
    assert not np.allclose(piano, continued)


def test_frames_cover_the_duration_to_one_hop(generator):
    res = generator.generate(duration=2.0, num_samples=2)
    hop_s = res.features.hop_length / res.features.sample_rate
    assert res.frames.shape[0] == 2 and res.frames.shape[2] == 32
    assert abs(res.frames.shape[1] * hop_s - 2.0) < hop_s


def test_generate_files_writes_audio_mp3_midi_and_sidecar(tmp_path, smoke_run):
    written = generate_files(gen_cfg(tmp_path, smoke_run["ckpt"], prompt="'calm piano melody'"))[0]
    y, sr = sf.read(written["wav"])
    assert abs(len(y) - 1.5 * sr) <= 512 and np.abs(y).max() <= 1.0 and np.abs(y).max() > 0.01
    y_mp3, sr_mp3 = sf.read(written["mp3"])
    assert sr_mp3 == sr and abs(len(y_mp3) / sr_mp3 - 1.5) < 0.1
    score = music21.converter.parse(written["mid"])
    assert len(score.flatten().notes) > 0
    assert Path(written["json"]).read_text().count("checkpoint_sha256") == 1
    again = generate_files(gen_cfg(tmp_path, smoke_run["ckpt"], prompt="'calm piano melody'"))[0]
    assert again["wav"] != written["wav"]  # never overwrites silently
    y2, _ = sf.read(again["wav"])
    assert np.array_equal(y, y2)  # same seed, same bytes


def _short_runs(generator: Generator, frames: np.ndarray, min_frames: int) -> int:
    """Pitch-class runs of generated frames [T, F] shorter than ``min_frames`` and followed by a change."""
    net = generator.model
    tokens = net.head._tokens(net.normaliser.normalise(torch.as_tensor(frames).float()))
    classes = net.head.pitch_classes()[tokens].tolist()
    changes = [t for t in range(1, len(classes)) if classes[t] != classes[t - 1]]
    return sum(b - a < min_frames for a, b in zip([0, *changes], changes))


def test_min_note_frames_holds_every_pitch_class_the_music_changes_to(generator):
    default = OmegaConf.load(ROOT / "conf" / "model" / "head" / "tokens.yaml").sampling.min_note_frames
    free = generator.generate(prompt="calm piano melody", duration=3.0, seed=0, min_note_frames=1)
    held = generator.generate(prompt="calm piano melody", duration=3.0, seed=0)   # the checkpoint's default
    assert held.metadata["min_note_frames"] == default > 1 and free.metadata["min_note_frames"] == 1
    assert _short_runs(generator, free.frames[0], default) > 0
    assert _short_runs(generator, held.frames[0], default) == 0


@pytest.mark.parametrize("overrides,error,match", [
    ({"duration": 0}, ValueError, "duration"),
    ({"duration": 601}, ValueError, "duration"),
    ({"guidance": -1}, ValueError, "guidance"),
    ({"min_p": 1.0}, ValueError, "min_p must be in"),
    ({"min_p": -0.1}, ValueError, "min_p must be in"),
    ({"pitch_temperature": -0.5}, ValueError, "pitch_temperature must be >= 0"),
    ({"min_note_frames": 0}, ValueError, "min_note_frames must be an integer >= 1"),
])
def test_bad_arguments_fail_before_writing(tmp_path, smoke_run, overrides, error, match):
    with pytest.raises(error, match=match):
        generate_files(gen_cfg(tmp_path, smoke_run["ckpt"], **overrides))
    assert not any(tmp_path.iterdir())


def test_bad_reference_audio_is_named(tmp_path, smoke_run):
    silent, empty = tmp_path / "silent.wav", tmp_path / "empty.wav"
    sf.write(silent, np.zeros(22050, dtype=np.float32), 22050)
    empty.write_bytes(b"")
    out = tmp_path / "out"
    for bad in (silent, empty, tmp_path / "missing.wav"):
        with pytest.raises(AudioError, match=bad.name):
            generate_files(gen_cfg(out, smoke_run["ckpt"], audio=bad))
    assert not out.exists() or not any(out.iterdir())


def test_bad_checkpoints_are_refused(tmp_path, smoke_run):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(smoke_run["ckpt"].read_bytes()[:1000])
    other_format = tmp_path / "old.ckpt"
    ckpt = torch.load(smoke_run["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["format_version"] = 0
    torch.save(ckpt, other_format)
    for path, match in ((tmp_path / "nope.ckpt", "no such file"), (corrupt, "corrupt"), (other_format, "format 0")):
        with pytest.raises(CheckpointError, match=match):
            Generator.from_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_tampered_checkpoint_does_not_run_code(tmp_path, smoke_run):
    ckpt = torch.load(smoke_run["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["payload"] = _Payload()
    tampered = tmp_path / "tampered.ckpt"
    torch.save(ckpt, tampered, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match="refused"):
        Generator.from_checkpoint(tampered)


def test_generate_cli_prints_paths_and_reports_bad_input(tmp_path, smoke_run):
    out = run_script("generate.py", f"ckpt={smoke_run['ckpt']}", "prompt=fast violin tune", "duration=1",
                     f"out={tmp_path}", f"paths.root_dir={tmp_path}")
    assert "wav:" in out.stdout and "mid:" in out.stdout
    assert (tmp_path / "fast-violin-tune-s0.midi.wav").is_file()
    bad = run_script("generate.py", f"ckpt={tmp_path}/missing.ckpt", f"out={tmp_path}/x",
                     f"paths.root_dir={tmp_path}", check=False)
    assert bad.returncode != 0 and "missing.ckpt: no such file" in bad.stderr
    unknown = run_script("generate.py", f"ckpt={smoke_run['ckpt']}", "durration=3", f"paths.root_dir={tmp_path}",
                         check=False)
    assert unknown.returncode != 0 and "durration" in unknown.stderr


def test_rollout_threads_leave_frames_and_torch_settings_alone(generator, smoke_run):
    threads = torch.get_num_threads()
    one = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu", threads=1)
    frames = one.generate(prompt="calm piano melody", duration=1.0, seed=2).frames
    assert torch.get_num_threads() == threads
    np.testing.assert_allclose(frames, generator.generate(prompt="calm piano melody", duration=1.0, seed=2).frames,
                               atol=1e-5)


def test_generation_imports_nothing_it_does_not_use(smoke_run, tmp_path):
    """Start-up is most of a generate.py process: the generation path (the API, its files and the
    command's module) must not import Lightning, torchmetrics, transformers (the default text model
    runs on musegen.bert), music21 (MIDI is written with pretty_midi), numba or scipy.signal
    (librosa's filters and unit conversions, and pyloudnorm, which only loudness normalisation needs)."""
    heavy = ["lightning", "pytorch_lightning", "torchmetrics", "transformers", "music21", "numba", "scipy.signal"]
    code = ("import sys, musegen, musegen.cli.generate; "
            f"musegen.load({str(smoke_run['ckpt'])!r}, device='cpu').generate('calm piano', duration=1.0)"
            f".save({str(tmp_path)!r}); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert any(tmp_path.glob("*.mid")) and any(tmp_path.glob("*.mp3"))


def test_generators_in_one_process_share_the_loaded_text_encoder(generator, smoke_run):
    again = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu")
    assert again.encoder is generator.encoder and again.model is not generator.model
    assert torch.equal(again.encoder.encode(["calm piano melody"]), generator.encoder.encode(["calm piano melody"]))


def test_guidance_zero_ignores_the_text_and_one_is_the_conditional_model(generator):
    kw = dict(duration=1.0, seed=1)
    piano, violin = (generator.generate(prompt=p, guidance=0.0, **kw).frames for p in ("calm piano", "fast violin"))
    np.testing.assert_array_equal(piano, violin)  # uncond + 0 * (cond - uncond)
    # as with no prompt at all: the null text, in a batch of one instead of two (float rounding only,
    # so compared where sampling cannot turn a rounding difference into another token: temperature 0)
    still = dict(kw, temperature=0.0)
    np.testing.assert_allclose(generator.generate(prompt="calm piano", guidance=0.0, **still).frames,
                               generator.generate(prompt=None, **still).frames, rtol=1e-4, atol=1e-3)
    assert not np.allclose(generator.generate(prompt="calm piano", guidance=1.0, **kw).frames, piano)


def test_the_note_envelope_shapes_the_written_frames_and_leaves_the_tokens_as_drawn(generator):
    """The generator finishes a generation with the head's envelope: the same draws without it are the
    tokens' centroids, and with it each frame moves by the envelope at how long its note has lasted."""
    net, head = generator.model, generator.model.head
    assert head.envelope_frames > 0
    shaped = generator.generate(prompt="calm piano melody", duration=2.0, seed=0).frames[0]
    envelope = head.envelope.clone()
    try:
        head.envelope.zero_()
        plain = generator.generate(prompt="calm piano melody", duration=2.0, seed=0).frames[0]
    finally:
        head.envelope.copy_(envelope)
    normalised = net.normaliser.normalise(torch.as_tensor(plain)[:, : net.out_dim])
    tokens = head._tokens(normalised)
    assert torch.allclose(head._decode(tokens, None), normalised, atol=1e-4)   # centroids, as drawn
    lasted = head._lasted(head._notes(tokens)).clamp(max=head.envelope_frames - 1)
    expected = plain.copy()
    expected[:, : net.out_dim] += (envelope[lasted] * net.normaliser.std[: net.out_dim]).numpy()
    expected[:, net.n_mfcc:] = expected[:, net.n_mfcc:].clip(0.0, 1.0)
    assert np.allclose(shaped, expected, atol=1e-3)
    assert not np.allclose(shaped, plain, atol=1e-2)
