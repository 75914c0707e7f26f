"""`musegen-evaluate` (evaluate.py in the clone): a checkpoint's metrics beside their baselines."""
import sys
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from rich.console import Console

from musegen.apps.errors import user_errors
from musegen.apps.evaluate import evaluate_checkpoint, table
from musegen.cli import CONFIG_PATH


def generate_config(cfg: DictConfig, out_dir: Path) -> DictConfig:
    """generate.py's own config (conf/generate.yaml) for this checkpoint, writing under out_dir/rtf: the
    rtf metric times the very call a user makes."""
    gen = compose(config_name="generate")
    with open_dict(gen):
        gen.ckpt, gen.device, gen.seed, gen.vocoder = str(cfg.ckpt), cfg.device, int(cfg.seed), cfg.vocoder
        gen.prompt, gen.duration = cfg.rtf.prompt, float(cfg.rtf.duration)
        gen.out = str(out_dir / "rtf")
        del gen["paths"]
    return gen


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Evaluate, print the table and where metrics.json was written."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors("evaluate.py", out_dir, stop_at=cfg.paths.log_dir):
        results = evaluate_checkpoint(cfg, out_dir, generate_config(cfg, out_dir))
    Console(width=None if sys.stdout.isatty() else 120).print(table(results))
    print(f"metrics: {out_dir / 'metrics.json'}")
