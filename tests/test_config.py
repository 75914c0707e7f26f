"""Every experiment composes and instantiates; the entry points answer --help."""
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_train(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    from musegen.training import build

    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    OmegaConf.resolve(cfg)
    if cfg.trainer.accelerator == "gpu":  # GPU configs must be right even where no GPU is present
        assert cfg.trainer.devices in (-1, 1) or cfg.trainer.devices >= 1
        with open_dict(cfg):
            cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision = "cpu", 1, "32-true"
            cfg.trainer.pop("strategy", None), cfg.trainer.pop("sync_batchnorm", None)
    datamodule, module, trainer = build(cfg)
    assert module.hparams.context_frames == cfg.model.context_frames
    assert datamodule.hparams.context_frames == cfg.model.context_frames
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("group,option", [("trainer", "gpu"), ("trainer", "ddp"), ("trainer", "ddp_cpu"),
                                          ("model", "large"), ("data", "kaggle"), ("text", "hf"),
                                          ("callbacks", "early_stopping"), ("logger", "csv")])
def test_group_options_compose(group, option, tmp_path):
    overrides = [f"{group}={option}"] + (["data.source.root=/x"] if option == "folder" else [])
    cfg = compose_train(overrides, tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg[group] is not None


def test_generate_and_evaluate_configs_compose():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("generate", overrides=["ckpt=x.ckpt"])
        assert cfg.duration > 0 and cfg.guidance >= 0
        cfg = compose("evaluate", overrides=["ckpt=x.ckpt"])
        assert cfg.num_prompts > 0 and cfg.data.source is not None


@pytest.mark.parametrize("script", ["train.py", "generate.py", "evaluate.py"])
def test_entry_points_answer_help(script):
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Powered by Hydra" in out.stdout
