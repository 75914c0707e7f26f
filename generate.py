"""Generate music from a checkpoint: WAV, MP3, MIDI and a JSON sidecar. Example:

    python generate.py ckpt=outputs/demo/RUN/checkpoints/last.ckpt prompt="calm piano melody" duration=30
"""
import hydra
from omegaconf import DictConfig

from musegen.apps.errors import user_errors
from musegen.apps.generate import generate_files


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    with user_errors("generate.py"):
        written = generate_files(cfg)
    for sample in written:
        for kind, path in sample.items():
            print(f"{kind:>9}: {path}")


if __name__ == "__main__":
    main()
