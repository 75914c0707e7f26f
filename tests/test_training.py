"""train.py end to end on the smoke experiment: checkpoints, TensorBoard, samples, DDP."""
from pathlib import Path

import torch
from conftest import run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from musegen.checkpoint import load_model


def _events(run: Path) -> EventAccumulator:
    files = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {run}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"audio": 0, "images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_smoke_run_writes_checkpoints_tensorboard_and_samples(smoke_run):
    run = smoke_run["run"]
    assert smoke_run["ckpt"].is_file()
    assert any(p.name.startswith("epoch_") for p in (run / "checkpoints").iterdir())
    tags = _events(run).Tags()
    assert {"val/skill", "val/loss", "val/persistence_mse", "train/loss_epoch"} <= set(tags["scalars"])
    assert any(t.startswith("samples/") for t in tags["audio"])
    assert any(t.startswith("mel/") for t in tags["images"]) and any(t.startswith("pianoroll/") for t in tags["images"])
    epoch_dirs = sorted((run / "samples").iterdir())
    assert [d.name for d in epoch_dirs] == ["epoch_001", "epoch_002"]
    assert list(epoch_dirs[0].glob("*.wav")) and list(epoch_dirs[0].glob("*.mid"))


def test_checkpoint_is_plain_data_with_everything_generation_needs(smoke_run):
    ckpt = torch.load(smoke_run["ckpt"], map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["features"]["n_mfcc"] == 20 and hp["text_encoder"]["_target_"].startswith("musegen.text.")
    assert ckpt["state_dict"]["model.normaliser.ready"].item()
    std = load_model(smoke_run["ckpt"]).normaliser.std
    assert not torch.equal(std, torch.ones_like(std))  # normalisation statistics travelled


def test_ddp_cpu_two_processes_leave_one_run_folder(tmp_path):
    run_script("train.py", "experiment=smoke", "trainer=ddp_cpu", "callbacks=none", "test=false",
               f"paths.root_dir={tmp_path}", "trainer.max_epochs=1")
    runs = [p for p in (tmp_path / "outputs" / "smoke").iterdir()]
    assert len(runs) == 1, runs
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / "data" / "cache").iterdir())) == 1  # the cache was built once


def test_fine_tuning_starts_from_a_checkpoint_with_its_own_lr_and_frozen_parts(smoke_run, tmp_path):
    out = run_script("train.py", "experiment=smoke", "callbacks=none", "test=false", "trainer.max_epochs=1",
                     f"paths.root_dir={smoke_run['root']}", "run_name=finetune", f"init_from={smoke_run['ckpt']}",
                     "finetune.lr=5e-4", "finetune.freeze=[backbone]")
    assert "initialised weights and normalisation from" in out.stderr + out.stdout
    tuned = torch.load(smoke_run["root"] / "outputs" / "smoke" / "finetune" / "checkpoints" / "last.ckpt",
                       map_location="cpu", weights_only=True)
    source = torch.load(smoke_run["ckpt"], map_location="cpu", weights_only=True)
    hp = tuned["hyper_parameters"]
    assert hp["lr"] == 5e-4 and hp["init_from"]["path"] == str(smoke_run["ckpt"])
    for name, value in source["state_dict"].items():
        if name.startswith("model.backbone."):
            assert torch.equal(tuned["state_dict"][name], value), name  # frozen
    head = next(k for k in source["state_dict"] if k.startswith("model.head.") and k.endswith("weight"))
    assert not torch.equal(tuned["state_dict"][head], source["state_dict"][head]), head
    assert torch.equal(tuned["state_dict"]["model.normaliser.mean"], source["state_dict"]["model.normaliser.mean"])


def test_a_token_model_with_loudness_levels_trains_and_generates_from_its_checkpoint(tmp_path):
    """``model.head.loudness_levels``: the level codebook and its weights travel in the checkpoint as data,
    the loudness is logged beside the tokens' bits, and generate.py writes music from it."""
    run_script("train.py", "experiment=smoke", "model.head.loudness_levels=4", "model.head.envelope_frames=0",
               f"paths.root_dir={tmp_path}", "run_name=loud")
    run = tmp_path / "outputs" / "smoke" / "loud"
    ckpt = run / "checkpoints" / "last.ckpt"
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert data["hyper_parameters"]["head"]["loudness_levels"] == 4
    assert data["state_dict"]["model.head.levels.centroids"].shape == (4, 1)
    assert {"val/bits_per_frame", "val/loudness_bits_per_frame"} <= set(_events(run).Tags()["scalars"])
    model = load_model(ckpt)
    assert model.head.loudness_levels == 4 and bool(model.head.levels.fitted)
    run_script("generate.py", f"ckpt={ckpt}", "prompt=a slow cello line", "duration=1", f"out={tmp_path / 'gen'}",
               f"paths.root_dir={tmp_path}")
    assert (tmp_path / "gen" / "a-slow-cello-line-s0.wav").is_file()
