"""`musegen-generate` (generate.py in the clone): music from a checkpoint, written under `out`."""
import hydra
from omegaconf import DictConfig

from musegen.apps.errors import user_errors
from musegen.apps.generate import generate_files
from musegen.cli import CONFIG_PATH


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="generate")
def main(cfg: DictConfig) -> None:
    """Generate, then print every written file's path: the one place a user or script learns them."""
    with user_errors("generate.py"):
        written = generate_files(cfg)
    for sample in written:
        for kind, path in sample.items():
            print(f"{kind:>9}: {path}")
