"""Evaluate a checkpoint: every quality metric beside its baselines, as metrics.json and a table. Example:

    python evaluate.py ckpt=outputs/demo/RUN/checkpoints/last.ckpt [settings.num_prompts=4] [settings.seconds=4]

Installed, the same command is `musegen-evaluate` (musegen.cli.evaluate), from any folder.
"""
from musegen.cli.evaluate import main

if __name__ == "__main__":
    main()
