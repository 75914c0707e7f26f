"""Generation real-time factor: seconds of audio per wall second for generate.py's whole path
(checkpoint load, text encoding, iterative generation, synthesis, WAV/MP3/MIDI/rendition/JSON files).

Prints one JSON object. Uses the demo-sized model with freshly initialised weights unless --ckpt is
given: the cost of generation does not depend on what the weights learned.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from musegen.evaluation import measure_rtf  # noqa: E402
from musegen.module import MuseModule  # noqa: E402
from musegen.text import SentenceEncoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def demo_checkpoint(path: Path) -> Path:
    """A checkpoint of the demo model (conf/model/small.yaml), as train.py would write it."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo"])
    args = OmegaConf.to_container(cfg.model, resolve=False)
    args.pop("_target_")
    encoder = SentenceEncoder()
    module = MuseModule(**args, text_dim=encoder.dim, features=OmegaConf.to_container(cfg.features),
                        text_encoder=encoder.config())
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def generate_cfg(ckpt: Path, out: Path, duration: float):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[f"ckpt={ckpt}", f"out={out}", f"duration={duration}",
                                             "prompt='calm piano melody'", "device=cpu"])
    with open_dict(cfg):
        del cfg["paths"]
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", type=Path)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or demo_checkpoint(Path(tmp) / "demo.ckpt")
        for i in range(args.repeats):
            runs.append(measure_rtf(generate_cfg(ckpt, Path(tmp) / f"out{i}", args.duration)))
    print(json.dumps({
        "what": "generation_rtf", "machine": machine(),
        "settings": {"duration_s": args.duration, "repeats": args.repeats, "checkpoint": str(args.ckpt or "demo model, fresh weights"),
                     "files": "wav, mp3, mid, midi.wav, json", "synthesis": "mix"},
        "figures": {"rtf_median": round(statistics.median(r["rtf"] for r in runs), 2),
                    "wall_s": [round(r["wall_seconds"], 2) for r in runs]},
    }))


if __name__ == "__main__":
    main()
