"""The neural vocoder: a tiny one trained with a real Trainer on a few demo clips, its checkpoint, rendering,
resynthesis of a folder, and the configs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, run_script
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from musegen.audio import finalize
from musegen.checkpoint import CheckpointError
from musegen.features import extract
from musegen.model_card import training_facts, write_training_card
from musegen.model_card_markdown import fmt
from musegen.resynth import resynthesize
from musegen.vocoder import Vocoder, load_vocoder

TINY = [
    "data.source.num_clips=12", "data.source.clip_seconds=2.0", "data.source.num_workers=1", "data.num_workers=1",
    "data.crop_frames=16", "model.net.dim=16", "model.net.intermediate=32", "model.net.blocks=1",
    "trainer.max_epochs=8", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null", "model.lr=3e-2",
]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """experiment=vocoder_demo, tiny, built as train.py builds it: data and model by instantiate."""
    root = tmp_path_factory.mktemp("vocoder")
    cfg = _compose("experiment=vocoder_demo", f"paths.root_dir={root}", *TINY)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
    L.seed_everything(0)
    datamodule = instantiate(cfg.data, text_encoder=instantiate(cfg.text))
    module = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c and "_target_" in c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=[instantiate(cfg.logger.tensorboard)])
    before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    trainer.fit(module, datamodule=datamodule)
    after = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return {"root": root, "module": module, "datamodule": datamodule, "trainer": trainer, "before": before,
            "after": after, "ckpt": root / "run" / "checkpoints" / "last.ckpt", "run": root / "run"}


def test_training_lowers_the_validation_loss_and_logs_audio(trained):
    assert trained["after"]["val/loss"] < trained["before"]["val/loss"]
    assert trained["after"]["val/lsd"] < trained["before"]["val/lsd"]
    assert trained["after"]["val/chroma"] < trained["before"]["val/chroma"]   # it learns the frames' pitch classes
    events = list((trained["run"] / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and max(e.stat().st_size for e in events) > 10_000  # audio and mel images, not only scalars


def test_the_model_card_describes_a_vocoder(trained, tmp_path):
    facts = training_facts(trained["datamodule"], trained["module"], trained["trainer"],
                           {"task_name": "vocoder_demo"}, trained["after"])
    card = write_training_card(tmp_path, facts).read_text()
    parameters = sum(p.numel() for p in trained["module"].parameters())
    assert f"A musegen vocoder (feature frames to waveform): {parameters:,} parameters" in card
    assert "12 clips" in card and "| training crops |" in card
    assert "(blocks 1, dim 16, gl_iters 16, head istft, intermediate 32," in card
    assert "not conditioned on text" in card and "Not evaluated yet" not in card
    assert f"| lsd | {fmt(trained['after']['val/lsd'])} | n/a |" in card


def test_crops_come_from_the_generators_own_split(trained):
    dm = trained["datamodule"]
    assert set(dm.split_clips["test"]).isdisjoint(dm.split_clips["train"])
    assert dm.datasets["train"].clips == dm.split_clips["train"]  # 2 s clips are all long enough
    assert dm.datasets["val"].clips == dm.split_clips["val"]
    item = dm.datasets["train"][0]
    assert item["frames"].shape == (16, 32) and item["audio"].shape == (16 * 512 + 2048,)


def test_audio_is_aligned_with_its_cached_frames(trained):
    """Features re-extracted from a clip's audio are its cached frames (the zero tail aside)."""
    train = trained["datamodule"].datasets["train"]
    features = trained["datamodule"].features
    cached = train.frames[0].numpy()
    again = extract(train.audio[0][1024:-1024].numpy(), features)
    n = len(cached) - 2
    np.testing.assert_allclose(again[:n, :20], cached[:n, :20], atol=1e-2)
    assert not np.allclose(again[1:n + 1, :20], cached[:n, :20], atol=1e-2)  # one hop off is visibly wrong


def test_normalisation_is_the_training_frames(trained):
    vocoder = trained["module"].vocoder
    assert torch.allclose(vocoder.mean, trained["datamodule"].stats["mean"])
    assert torch.allclose(vocoder.std, trained["datamodule"].stats["std"])


def test_checkpoint_round_trip_renders_identically(trained):
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)  # plain data
    assert ckpt["hyper_parameters"]["features"]["hop_length"] == 512
    loaded = load_vocoder(trained["ckpt"])
    assert isinstance(loaded, Vocoder) and not loaded.training
    frames = trained["datamodule"].cache.clip_frames(0).numpy()
    original = trained["module"].vocoder
    np.testing.assert_array_equal(loaded.render(frames), original.cpu().render(frames))


def test_render_shapes_follow_the_synthesizer_contract(trained):
    vocoder = load_vocoder(trained["ckpt"])
    hop = vocoder.features.hop_length
    frames = trained["datamodule"].cache.clip_frames(0)[:40]
    one = vocoder.render(frames)
    assert one.shape == (40 * hop,) and one.dtype == np.float32 and np.isfinite(one).all()
    batch = vocoder.render(torch.stack([frames, frames.flip(0)]))
    assert batch.shape == (2, 40 * hop)
    np.testing.assert_allclose(batch[0], one, atol=2e-4)  # batched FFTs round differently
    with pytest.raises(ValueError, match="frames must be"):
        vocoder.render(np.zeros((40, 20), dtype=np.float32))


def test_griffin_lim_head_renders_too(trained):
    features = trained["module"].vocoder.features.to_dict()
    vocoder = Vocoder(features, head="griffin_lim", dim=8, intermediate=8, blocks=1, gl_iters=2)
    assert vocoder.render(np.zeros((10, 32), dtype=np.float32)).shape == (10 * 512,)


def test_bad_checkpoints_give_one_clear_error(trained, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["ckpt"].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: .*(corrupt|truncated)"):
        load_vocoder(truncated)
    other = tmp_path / "generator.ckpt"
    torch.save({"hyper_parameters": {"format_version": 2}, "state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a musegen vocoder checkpoint"):
        load_vocoder(other)
    with pytest.raises(CheckpointError, match="no such file"):
        load_vocoder(tmp_path / "missing.ckpt")


def test_resynth_skips_and_reports_a_broken_file(trained, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    dm = trained["datamodule"]
    for i in dm.split_clips["test"][:2]:
        shutil.copy(dm.cache.paths[i], src / Path(dm.cache.paths[i]).name)
    (src / "broken.wav").write_bytes(b"RIFF not really a wave file")
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    run_script("musegen/resynth.py", f"vocoder={trained['ckpt']}", f"in={src}", f"out={out}", cwd=cwd)
    assert not any(cwd.iterdir())  # nothing outside `out`: no run folder, no .hydra
    report = json.loads((out / "report.json").read_text())
    assert len(report["written"]) == 2
    assert [Path(s["path"]).name for s in report["skipped"]] == ["broken.wav"]
    for entry in report["written"]:
        assert Path(entry["out"]).parent == out and Path(entry["out"]).suffix == ".wav"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="resynth", overrides=["vocoder=mix", f"in={src}", f"out={tmp_path / 'mix'}"])
    mixed = resynthesize(cfg)
    assert len(mixed["written"]) == 2 and "broken.wav" in mixed["skipped"][0]["reason"]
    bad = run_script("musegen/resynth.py", f"vocoder={src / 'broken.wav'}", f"in={src}", f"out={tmp_path / 'x'}",
                     check=False)
    assert bad.returncode != 0 and "resynth:" in bad.stderr and "Traceback" not in bad.stderr


def test_gpu_experiment_composes_and_instantiates():
    cfg = _compose("experiment=vocoder_gpu")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    module = instantiate(cfg.model)
    assert module.vocoder.hparams["blocks"] == cfg.model.net.blocks
    datamodule = instantiate(cfg.data, text_encoder=None)
    assert datamodule.crop_frames == cfg.data.crop_frames
    folder = _compose("experiment=vocoder_demo", "data=folder", "data.source.root=/somewhere")
    assert folder.data.source._target_.endswith("FolderSource")
    assert folder.data._target_.endswith("VocoderDataModule")


def test_generation_renders_with_a_vocoder_when_given_one(trained, smoke_run, tmp_path):
    """generate.py vocoder=PATH: the written audio is the vocoder's rendering of the generated frames."""
    from musegen.apps.generate import generate_files
    from musegen.generation import Generator

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[f"ckpt={smoke_run['ckpt']}", f"out={tmp_path}", "duration=1.5",
                                             "prompt=calm piano", f"vocoder={trained['ckpt']}",
                                             "export.render_midi=false", "export.formats=[wav]"])
    written = generate_files(cfg)[0]
    sidecar = json.loads(Path(written["json"]).read_text())
    assert sidecar["export"]["synthesis"] == "vocoder" and sidecar["vocoder"]["path"] == str(trained["ckpt"])
    frames = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu").generate(
        prompt="calm piano", duration=1.5, seed=0).frames[0]
    # finished as every written sample is (DC, fades, peak gain): equal up to 16-bit PCM
    expected = finalize(load_vocoder(trained["ckpt"]).render(frames)[: int(1.5 * 22050)], 22050,
                        peak_db=cfg.export.peak_db)
    heard, _ = sf.read(written["wav"], dtype="float32")
    assert heard.shape == expected.shape and np.abs(heard - expected).max() < 1e-4
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        bad = compose("generate", overrides=[f"ckpt={smoke_run['ckpt']}", f"out={tmp_path}",
                                             "export.synthesis=vocoder"])
    with pytest.raises(ValueError, match="needs vocoder=PATH"):
        generate_files(bad)


def test_evaluation_hears_the_vocoder_and_compares_the_analytic_synthesis(trained, smoke_run, tmp_path):
    """evaluate.py vocoder=PATH: every generated and resynthesised clip is the vocoder's rendering, as
    generate.py writes it; the inverse-MFCC baseline and mel_fad's analytic comparisons keep conf/synth."""
    from dataclasses import replace

    from musegen.apps.evaluate import build_datamodule, training_data_config
    from musegen.audio import Synthesizer
    from musegen.eval.harness import AudioPath
    from musegen.eval.run import Evaluation
    from musegen.generation import Generator
    from musegen.instruments import register_for

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={smoke_run['ckpt']}", "settings.num_prompts=1",
                                             "settings.seconds=2", "settings.max_test_clips=2", "settings.max_labels=2",
                                             "settings.fad_samples=6", "settings.write_samples=false"])
    gen = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu")
    dm = build_datamodule(training_data_config(smoke_run["ckpt"]), gen)
    export, synth = instantiate(cfg.export), Synthesizer(gen.features, n_iter=2)
    vocoder = load_vocoder(trained["ckpt"], gen.features)
    evaluation = Evaluation(gen, dm, instantiate(cfg.settings), synth, export, tmp_path, vocoder=vocoder)
    evaluation.prompt_adherence()
    sample = evaluation.generated[0]
    expected = finalize(vocoder.render(sample.frames)[: len(sample.audio)], 22050, peak_db=export.peak_db)
    np.testing.assert_allclose(sample.audio, expected, atol=1e-6)
    i = evaluation.eval_ids[0]
    frames = dm.cache.clip_frames(i).numpy()
    seconds = len(frames) * gen.features.hop_length / gen.features.sample_rate
    register = register_for(dm.cache.labels[i])
    inverse_mfcc = AudioPath(synth, replace(export, synthesis="mfcc")).render(frames, seconds, register).audio
    np.testing.assert_allclose(evaluation._resynth(i, "mfcc").audio, inverse_mfcc, atol=1e-6)
    evaluation.melody_adherence()
    entry = evaluation.mel_fad()
    assert entry["details"]["synthesis"] == "vocoder" and entry["details"]["generated"] == 6
    assert {"generated_mix", "train_same_size_resynthesised_mix"} <= set(entry["baselines"])
    assert all(np.isfinite(v) for v in [entry["value"], *entry["baselines"].values()])
    assert entry["baselines"]["generated_mix"] != entry["value"]   # the same frames, heard through the other path
    with pytest.raises(ValueError, match="needs vocoder=PATH"):
        Evaluation(gen, dm, instantiate(cfg.settings), synth, replace(export, synthesis="vocoder"), tmp_path)


def test_per_epoch_samples_are_rendered_by_a_vocoder_when_given_one(trained, smoke_run, tmp_path):
    """callbacks.sample_renderer.vocoder=PATH: each epoch's sample is the vocoder's rendering of the
    generated frames; a checkpoint that is no vocoder stops the run when fitting starts."""
    from types import SimpleNamespace

    from musegen.callbacks import SampleRenderer
    from musegen.generation import Generator

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", f"paths.root_dir={tmp_path}"])
    model = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu").model
    module = SimpleNamespace(model=model, device="cpu", training=False, train=lambda mode=True: None)
    trainer = SimpleNamespace(current_epoch=0, max_epochs=1, sanity_checking=False, is_global_zero=True, loggers=[],
                              global_step=1)
    renderer = instantiate(cfg.callbacks.sample_renderer, prompts=["calm piano"], seconds=1.0,
                           out_dir=str(tmp_path / "samples"), vocoder=str(trained["ckpt"]))
    assert isinstance(renderer, SampleRenderer)
    renderer.on_fit_start(trainer, module)
    renderer.on_validation_epoch_end(trainer, module)
    heard, _ = sf.read(tmp_path / "samples" / "epoch_001" / "calm-piano.wav", dtype="float32")
    frames = Generator.from_checkpoint(smoke_run["ckpt"], device="cpu").generate(
        prompt="calm piano", duration=1.0, seed=0).frames[0]
    expected = finalize(load_vocoder(trained["ckpt"]).render(frames)[:22050], 22050, peak_db=cfg.export.peak_db)
    assert heard.shape == expected.shape and np.abs(heard - expected).max() < 1e-4
    wrong = instantiate(cfg.callbacks.sample_renderer, out_dir=str(tmp_path / "x"), vocoder=str(smoke_run["ckpt"]))
    with pytest.raises(CheckpointError, match="not a musegen vocoder checkpoint"):
        wrong.on_fit_start(trainer, module)


def test_chroma_loss_reads_the_pitch_classes_the_features_read():
    """The vocoder's chroma loss hears a tone's pitch class as musegen.features does: about 0 against
    the tone's own extracted chroma, far from a tone a fifth away."""
    from musegen.audio import Synthesizer
    from musegen.features import FeatureConfig
    from musegen.vocoder.losses import ChromaLoss

    feats = FeatureConfig()
    t = np.arange(feats.sample_rate) / feats.sample_rate
    a, e = (np.sin(2 * np.pi * f * t).astype(np.float32) for f in (440.0, 659.26))
    loss = ChromaLoss(feats.sample_rate, feats.n_fft, feats.n_chroma)
    stft = Synthesizer(feats).stft
    magnitude = stft(torch.from_numpy(a)[None]).abs()[:, 2:-2]
    chroma = torch.from_numpy(extract(a, feats)[None, 2:-2, feats.n_mfcc:])
    assert int(loss.chroma(magnitude).mean(1).argmax()) == 9   # A
    same = float(loss(magnitude, chroma))
    other = float(loss(stft(torch.from_numpy(e)[None]).abs()[:, 2:-2], chroma))
    assert same < 0.02 and other > 10 * same, (same, other)


def test_logged_vocoder_audio_stays_within_full_scale(capsys) -> None:
    """TensorBoard clips audio past full scale and prints a warning; an early vocoder renders that loud."""
    from torch.utils.tensorboard.summary import audio

    from musegen.vocoder.callbacks import FULL_SCALE, within_full_scale

    loud = np.sin(np.linspace(0, 200, 4000)).astype(np.float32) * 1.7
    scaled = within_full_scale(loud)
    assert np.isclose(np.abs(scaled).max(), FULL_SCALE)
    assert np.allclose(scaled, loud * (FULL_SCALE / np.abs(loud).max()))
    quiet = loud / 2
    assert np.array_equal(within_full_scale(quiet), quiet)
    audio("clip", scaled[None], sample_rate=16000)
    assert "out of range" not in capsys.readouterr().out
    audio("clip", loud[None], sample_rate=16000)   # what the callback logged before
    assert "out of range" in capsys.readouterr().out
