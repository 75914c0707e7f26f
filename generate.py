"""Generate music from a checkpoint: WAV, MP3, MIDI and a JSON sidecar. Example:

    python generate.py ckpt=outputs/demo/RUN/checkpoints/last.ckpt prompt="calm piano melody" duration=30
"""
import logging

import hydra
from omegaconf import DictConfig

from musegen.checkpoint import CheckpointError
from musegen.export import generate_files
from musegen.features import AudioError
from musegen.text import TextModelUnavailable

log = logging.getLogger("generate")


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        written = generate_files(cfg)
    except (CheckpointError, AudioError, TextModelUnavailable, ValueError) as err:
        raise SystemExit(f"generate.py: {err}") from None
    for sample in written:
        for kind, path in sample.items():
            print(f"{kind:>9}: {path}")


if __name__ == "__main__":
    main()
