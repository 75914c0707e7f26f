"""Weights & Biases and MLflow as train.py loggers, offline: the per-epoch samples reach each of them."""
import hashlib
from pathlib import Path

import pytest
from conftest import ROOT, run_script
from hydra import compose, initialize_config_dir


def digests(paths) -> set[str]:
    return {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def smoke(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None) -> Path:
    """One `train.py experiment=smoke` run with these overrides; returns its run folder."""
    run_script("train.py", "experiment=smoke", f"paths.root_dir={tmp_path}", "run_name=run", *overrides, env=env)
    return tmp_path / "outputs" / "smoke" / "run"


def test_wandb_offline_run_holds_every_epochs_audio_and_figures(tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed: pip install -e '.[loggers]'")
    home = tmp_path / "wandb-home"                              # nothing written outside the test's folder
    env = {f"WANDB_{k}_DIR": str(home / k.lower()) for k in ("CONFIG", "CACHE", "DATA", "ARTIFACT")}
    run = smoke(tmp_path, "logger=wandb", "logger.wandb.offline=true", env=env)
    [offline] = (run / "wandb").glob("offline-run-*")
    media = offline / "files" / "media"
    rendered = sorted((run / "samples").glob("epoch_*/*.wav"))
    assert len(rendered) == 2                                   # two epochs, one prompt
    assert digests((media / "audio" / "samples").glob("*.wav")) == digests(rendered)
    for kind in ("mel", "pianoroll"):
        assert len(list((media / "images" / kind).glob("*.png"))) == 2, kind


def test_mlflow_store_holds_every_epochs_audio_and_figures(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed: pip install -e '.[loggers]'")
    run = smoke(tmp_path, "logger=mlflow")
    client = mlflow.MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    [record] = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert record.info.run_name == "run" and "val/loss" in record.data.metrics
    stored = Path(record.info.artifact_uri.removeprefix("file://"))
    assert stored.is_relative_to(run)                           # the files stay in the run folder
    for epoch in ("epoch_001", "epoch_002"):
        names = {Path(a.path).name for a in client.list_artifacts(record.info.run_id, f"samples/{epoch}")}
        assert names == {"calm-piano-melody.wav", "calm-piano-melody.mid", "0_calm-piano-melody_mel.png",
                         "0_calm-piano-melody_pianoroll.png"}, epoch
        assert digests([stored / "samples" / epoch / "calm-piano-melody.wav"]) == digests(
            [run / "samples" / epoch / "calm-piano-melody.wav"])


def test_many_is_every_logger() -> None:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=many"])
    assert {c._target_.rsplit(".", 1)[1] for c in cfg.logger.values()} == {
        "TensorBoardLogger", "CSVLogger", "WandbLogger", "MLFlowLogger"}
