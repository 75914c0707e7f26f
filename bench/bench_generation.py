"""Generation real-time factor: seconds of audio per wall second for generate.py's whole path
(checkpoint load, text encoding, iterative generation, synthesis, WAV/MP3/MIDI/rendition/JSON files).

The headline figure is the median of calls after the first in one process (a service, a notebook,
a sweep of prompts); the first call, which also loads the text model, and whole `python generate.py`
processes, each timed beside a process that only imports torch, are reported beside it.

Prints one JSON object. Uses the demo-sized model with freshly initialised weights unless --ckpt is
given: the cost of generation does not depend on what the weights learned.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from musegen.apps.evaluate import measure_rtf  # noqa: E402
from musegen.eval.metrics import rtf  # noqa: E402
from musegen.text import SentenceEncoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def demo_checkpoint(path: Path, head: str) -> Path:
    """A checkpoint of the demo model (conf/model/small.yaml) with `head`, built as train.py builds it;
    a head that learns from data first (a codebook) learns from random frames."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", f"model/head={head}", "paths.output_dir=."])
    module = instantiate(cfg.model, text_dim=SentenceEncoder().dim)
    module.model.head.prepare([torch.randn(4096, module.model.feature_dim)])
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def generate_cfg(ckpt: Path, out: Path, duration: float, vocoder: Path | None = None):
    extra = [f"vocoder={vocoder}"] if vocoder else []
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[f"ckpt={ckpt}", f"out={out}", f"duration={duration}",
                                             "prompt='calm piano melody'", "device=cpu", *extra])
    with open_dict(cfg):
        del cfg["paths"]
    return cfg


def stages(out: Path) -> dict[str, float]:
    """Seconds per stage, from the sidecar JSON generate.py wrote."""
    meta = json.loads(next(out.glob("*.json")).read_text())
    return {"load": meta["load_seconds"], "conditioning": meta["conditioning_seconds"],
            "rollout": meta["generation_seconds"] - meta["conditioning_seconds"], "export": meta["export_seconds"]}


def process_wall(*args: str) -> float:
    """Wall time of one `python ARGS` process: interpreter start and every import included."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def cli_against_torch(ckpt: Path, out: Path, duration: float, pairs: int) -> list[tuple[float, float]]:
    """(a whole `python generate.py` process, a process that only imports torch), side by side."""
    return [(process_wall(str(ROOT / "generate.py"), f"ckpt={ckpt}", f"out={out}/{i}", f"duration={duration}",
                          "prompt='calm piano melody'", "device=cpu"),
             process_wall("-c", "import torch"))
            for i in range(pairs)]


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def cli_figures(pairs: list[tuple[float, float]], duration: float) -> dict:
    """Whole generate.py processes beside bare `import torch` ones."""
    return {
        "cli_process_wall_s": [round(cli, 3) for cli, _ in pairs],
        "import_torch_process_wall_s": [round(torch_only, 3) for _, torch_only in pairs],
        "cli_over_import_torch_median": round(statistics.median(cli / t for cli, t in pairs), 2),
        "cli_process_rtf": round(rtf(duration, statistics.median(cli for cli, _ in pairs)), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", type=Path)
    p.add_argument("--head", default="mse", help="the head of the fresh demo model when no --ckpt is given")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=7, help="timed calls after the first")
    p.add_argument("--pairs", type=int, default=5,
                   help="generate.py processes, each beside an `import torch` one (0: warm calls only)")
    p.add_argument("--vocoder", type=Path, help="a vocoder checkpoint renders the audio in the warm calls "
                                                "(default: conf/synth's mix)")
    args = p.parse_args()
    if args.pairs < 0:
        p.error(f"--pairs must be >= 0, got {args.pairs}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or demo_checkpoint(Path(tmp) / "demo.ckpt", args.head)
        for i in range(args.repeats + 1):
            out = Path(tmp) / f"out{i}"
            runs.append({**measure_rtf(generate_cfg(ckpt, out, args.duration, args.vocoder)), **stages(out)})
        pairs = cli_against_torch(ckpt, Path(tmp) / "cli", args.duration, args.pairs)
    first, warm = runs[0], runs[1:]
    print(json.dumps({
        "what": "generation_rtf", "machine": machine(),
        "settings": {"duration_s": args.duration, "repeats": args.repeats,
                     "checkpoint": str(args.ckpt or f"demo model, fresh weights, head {args.head}"),
                     "files": "wav, mp3, mid, midi.wav, json",
                     "synthesis": "vocoder" if args.vocoder else "mix", "vocoder": str(args.vocoder or "")},
        "figures": {
            "rtf_median": round(rtf(args.duration, statistics.median(r["wall_seconds"] for r in warm)), 2),
            "wall_s": [round(r["wall_seconds"], 3) for r in warm],
            "stages_median_s": {k: median_of(warm, k) for k in ("load", "conditioning", "rollout", "export")},
            "first_call_wall_s": round(first["wall_seconds"], 3),
            "first_call_rtf": round(first["rtf"], 2),
            **(cli_figures(pairs, args.duration) if pairs else {}),
        },
    }))


if __name__ == "__main__":
    main()
