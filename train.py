"""Train a musegen model. Examples:

    python train.py                          # demo data, small model, CPU
    python train.py experiment=smoke         # a tiny end-to-end run
    python train.py data=folder data.source.root=/path/to/audio trainer=gpu
    python train.py -m hparams_search=optuna # an Optuna sweep

Installed, the same command is `musegen-train` (musegen.cli.train), from any folder.
"""
from musegen.cli.train import main

if __name__ == "__main__":
    main()
