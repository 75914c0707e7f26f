"""Train a musegen model. Examples:

    python train.py                          # demo data, small model, CPU
    python train.py experiment=smoke         # a tiny end-to-end run
    python train.py data=folder data.source.root=/path/to/audio trainer=gpu
    python train.py -m hparams_search=optuna # an Optuna sweep
"""
import hydra
from omegaconf import DictConfig

from musegen.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
