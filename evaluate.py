"""Evaluate a checkpoint: every quality metric beside its baselines, as metrics.json and a table. Example:

    python evaluate.py ckpt=outputs/demo/RUN/checkpoints/last.ckpt [num_prompts=4] [seconds=4]
"""
import sys
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from musegen.checkpoint import CheckpointError
from musegen.data.cache import CacheError
from musegen.evaluation import METRICS, evaluate_checkpoint
from musegen.features import AudioError
from musegen.text import TextModelUnavailable


def generate_config(cfg: DictConfig, out_dir: Path) -> DictConfig:
    """generate.py's own config (conf/generate.yaml) for this checkpoint, writing under out_dir/rtf."""
    gen = compose(config_name="generate")
    with open_dict(gen):
        gen.ckpt, gen.device, gen.seed = str(cfg.ckpt), cfg.device, int(cfg.seed)
        gen.prompt, gen.duration = cfg.rtf.prompt, float(cfg.rtf.duration)
        gen.out = str(out_dir / "rtf")
        del gen["paths"]
    return gen


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def table(results: dict):
    """A rich table: each metric, its baselines, the chance level and the design's target."""
    from rich.table import Table

    t = Table(title=f"musegen evaluation of {results['checkpoint']}")
    for col in ("metric", "model", "baselines (same run)", "chance", "target"):
        t.add_column(col)
    for name in METRICS:
        m = results["metrics"][name]
        base = "\n".join(f"{k} {_fmt(v)}" for k, v in m["baselines"].items())
        t.add_row(name, _fmt(m["value"]), base, _fmt(m["chance"]) if m["chance"] is not None else "", m["target"] or "")
    return t


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from rich.console import Console

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = evaluate_checkpoint(cfg, out_dir, generate_config(cfg, out_dir))
    except (CheckpointError, AudioError, CacheError, TextModelUnavailable, ValueError) as err:
        raise SystemExit(f"evaluate.py: {err}") from None
    Console(width=None if sys.stdout.isatty() else 120).print(table(results))
    print(f"metrics: {out_dir / 'metrics.json'}")


if __name__ == "__main__":
    main()
