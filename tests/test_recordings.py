"""Real recordings end to end: Debian's sonic-pi-samples (165 FLAC drum one-shots, loops and
ambiences of 0.02-10.7 s, 44.1 kHz, mono and stereo) through train.py with the default model, a
fine-tuning run from a demo-trained checkpoint, and generate.py continuing one of the loops.

`make system-deps` installs the package where apt exists; without it these tests are skipped, saying so.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import run_script

from musegen.checkpoint import read_checkpoint

SAMPLES = Path("/usr/share/sonic-pi/samples")  # where `dpkg -L sonic-pi-samples` puts them
LOOP = SAMPLES / "loop_amen.flac"

pytestmark = pytest.mark.skipif(
    not LOOP.is_file(),
    reason=f"no {LOOP}: install Debian's sonic-pi-samples (`make system-deps`, or apt-get install sonic-pi-samples)")

# One short epoch of the default model (model=small), so each run takes well under a minute of training.
SHORT = ("trainer.max_epochs=1", "+trainer.limit_train_batches=8", "+trainer.limit_val_batches=4",
         "+trainer.limit_test_batches=4", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
         "callbacks.sample_renderer=null", "data.num_workers=2")
FOLDER = ("data=folder", f"data.source.root={SAMPLES}")


def train(root: Path, run_name: str, *overrides: str) -> tuple[Path, str]:
    """train.py into root/outputs/train/<run_name>; (its last.ckpt, everything it logged)."""
    out = run_script("train.py", f"paths.root_dir={root}", f"run_name={run_name}", *SHORT, *overrides)
    run = root / "outputs" / "train" / run_name
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file(), f"no checkpoint in {run}:\n{out.stderr[-3000:]}"
    return ckpt, out.stdout + out.stderr + (run / "train.log").read_text()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One paths.root_dir for the module, so the sonic-pi feature cache is built once."""
    return tmp_path_factory.mktemp("recordings")


@pytest.fixture(scope="module")
def sonic_run(root: Path) -> tuple[Path, str]:
    return train(root, "sonic", *FOLDER)


@pytest.fixture(scope="module")
def demo_ckpt(root: Path) -> Path:
    """A demo-configured checkpoint: a smoke-sized demo set, but the default model."""
    ckpt, _ = train(root, "demo", "data=demo", "data.source.num_clips=12", "data.source.clip_seconds=2.0",
                    "data.source.num_workers=1")
    return ckpt


def test_default_model_trains_on_real_recordings(sonic_run: tuple[Path, str], root: Path) -> None:
    ckpt, log = sonic_run
    hp = read_checkpoint(ckpt)["hyper_parameters"]
    assert hp["segment_frames"] == 16 and hp["context_frames"] == 32  # conf/model/small.yaml
    (cache,) = [p for p in (root / "data" / "cache").iterdir() if not p.name.startswith(".")]
    report = json.loads((cache / "report.json").read_text())
    assert report["total"] == 165 and report["usable"] == report["clips"] >= 160  # none over 30 s: not split
    assert 300 < report["seconds"]["used"] <= report["seconds"]["total"] < 350
    # one-shots shorter than the model's 16-frame window (0.372 s) are skipped and named, not fatal
    assert "shorter than one window of model.segment_frames=16 frames (0.372 s)" in log
    assert "elec_tick.flac" in log


@pytest.fixture(scope="module")
def finetuned(root: Path, demo_ckpt: Path, sonic_run: tuple[Path, str]) -> tuple[Path, str]:
    """The demo checkpoint fine-tuned on the recordings (after sonic_run, which built their cache)."""
    return train(root, "finetune", *FOLDER, f"init_from={demo_ckpt}")


def test_fine_tuning_a_demo_checkpoint_on_real_recordings(demo_ckpt: Path, finetuned: tuple[Path, str]) -> None:
    tuned, log = finetuned
    assert f"from {demo_ckpt}" in log
    start, end = read_checkpoint(demo_ckpt)["state_dict"], read_checkpoint(tuned)["state_dict"]
    assert start.keys() == end.keys()
    changed = [k for k in start if start[k].is_floating_point() and not torch.equal(start[k], end[k])]
    assert changed, "fine-tuning left every weight as it was"


def test_generate_continues_a_loop(finetuned: tuple[Path, str], root: Path, tmp_path: Path) -> None:
    run_script("generate.py", f"ckpt={finetuned[0]}", f"audio={LOOP}", "duration=2", f"out={tmp_path}",
               f"paths.root_dir={root}")
    (wav,) = [p for p in tmp_path.glob("*.wav") if not p.name.endswith(".midi.wav")]
    assert sf.info(str(wav)).duration == pytest.approx(2.0, abs=0.1)
