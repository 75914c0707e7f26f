"""Train a musegen model. Examples:

    python train.py                          # demo data, small model, CPU
    python train.py experiment=smoke         # a tiny end-to-end run
    python train.py data=folder data.source.root=/path/to/audio trainer=gpu
    python train.py -m hparams_search=optuna # an Optuna sweep
"""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from musegen.apps.errors import user_errors
from musegen.apps.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors("train.py", HydraConfig.get().runtime.output_dir, stop_at=cfg.paths.log_dir):
        return train(cfg)


if __name__ == "__main__":
    main()
