"""`musegen-train` (train.py in the clone): train a model, its run folder under ./outputs."""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from musegen.apps.errors import user_errors
from musegen.apps.train import train
from musegen.cli import CONFIG_PATH


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns the optimised metric, which a hparams_search sweep maximises."""
    with user_errors("train.py", HydraConfig.get().runtime.output_dir, stop_at=cfg.paths.log_dir):
        return train(cfg)
