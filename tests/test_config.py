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
    """Every experiment builds its datamodule, module and trainer; GPU experiments run on CPU here,
    after checking they ask for what a GPU run needs."""
    import lightning as L

    from musegen.apps.train import build

    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    OmegaConf.resolve(cfg)
    if cfg.trainer.accelerator == "gpu":
        assert cfg.trainer.precision == "bf16-mixed" and cfg.get("torch_threads") is None
        with open_dict(cfg):
            cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision = "cpu", 1, "32-true"
            cfg.trainer.pop("strategy", None), cfg.trainer.pop("sync_batchnorm", None)
    datamodule, module, trainer = build(cfg)
    assert isinstance(module, L.LightningModule) and isinstance(datamodule, L.LightningDataModule)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    if hasattr(module, "model") and hasattr(module.model, "context_frames"):
        assert module.model.context_frames == datamodule.hparams.context_frames == cfg.model.context_frames


def test_gpu_trainers_ask_for_gpus_and_mixed_precision(tmp_path):
    gpu = compose_train(["trainer=gpu"], tmp_path).trainer
    assert (gpu.accelerator, gpu.devices, gpu.precision) == ("gpu", 1, "bf16-mixed")
    ddp = compose_train(["trainer=ddp"], tmp_path).trainer
    assert (ddp.accelerator, ddp.strategy, ddp.devices) == ("gpu", "ddp", -1)
    assert ddp.use_distributed_sampler


def test_large_model_is_larger_and_keeps_the_head_choice(tmp_path):
    sizes = {}
    for model in ("small", "large"):
        cfg = compose_train([f"model={model}", "data.source.num_clips=4"], tmp_path)
        OmegaConf.resolve(cfg)
        with open_dict(cfg):
            cfg.model.text_dim = 8
        module = instantiate(cfg.model)
        sizes[model] = sum(p.numel() for p in module.parameters())
        assert type(module.model.head).__name__ == "TokenHead"  # the default head
    assert sizes["large"] > 10 * sizes["small"]


@pytest.mark.parametrize("group,option,expected", [
    ("data", "kaggle", "KaggleSource"), ("text", "hf", "HFEncoder"),
    ("callbacks", "early_stopping", "EarlyStopping"), ("logger", "csv", "CSVLogger"),
])
def test_group_options_build_what_they_name(group, option, expected, tmp_path):
    cfg = compose_train([f"{group}={option}", "data.source.root=/x"], tmp_path)
    OmegaConf.resolve(cfg)
    node = cfg.data.source if group == "data" else cfg[group]
    if group in ("callbacks", "logger"):
        built = [type(instantiate(c)).__name__ for c in node.values() if c and "_target_" in c]
    else:
        built = [type(instantiate(node)).__name__]
    assert expected in built


def test_generate_and_evaluate_configs_build_their_settings():
    from musegen.audio import Synthesizer
    from musegen.eval.run import EvalSettings
    from musegen.export import ExportSettings
    from musegen.features import FeatureConfig

    with initialize_config_dir(str(CONF), version_base="1.3"):
        gen = compose("generate", overrides=["ckpt=x.ckpt"])
        ev = compose("evaluate", overrides=["ckpt=x.ckpt"])
    for cfg in (gen, ev):
        synth = instantiate(cfg.synth)(FeatureConfig())
        assert isinstance(synth, Synthesizer) and synth.n_iter == cfg.synth.n_iter
        assert isinstance(instantiate(cfg.export), ExportSettings)
    assert gen.guidance is None and gen.temperature is None  # the checkpoint's defaults
    assert isinstance(instantiate(ev.settings), EvalSettings)


@pytest.mark.parametrize("script", ["train.py", "generate.py", "evaluate.py"])
def test_entry_points_answer_help(script):
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Powered by Hydra" in out.stdout
