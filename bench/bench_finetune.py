"""Fine-tuning on real recordings: a demo-trained checkpoint fine-tuned for N epochs, the same checkpoint
unchanged, and a model trained from scratch for the same training wall time, all scored on the held-out
test split of one folder (by default Debian's sonic-pi-samples).

Prints one JSON object. Every run is a real `train.py` with `data=folder`, so each model sees the same
data, split (by file, seeded) and windows; the scores are the test metrics each run logs to TensorBoard.
The test split is used by none of them for training or checkpoint selection. `test/skill` (1 - MSE /
MSE of repeating the last frame, on the MFCCs) compares across models; `test/loss` and `test/mse` are in
each model's own normalisation units (a fine-tuned model keeps its demo statistics, a model from scratch
takes the folder's), so they compare only runs with the same statistics.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEST = ("test/skill", "test/chroma_skill", "test/loss", "test/mse", "test/persistence_mse")
VAL = ("val/skill", "val/loss")  # the last validation of a run that trained
QUIET = ("trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "callbacks.sample_renderer=null")


def train(workdir: Path, name: str, *overrides: str) -> tuple[Path, float]:
    """One train.py run into workdir/outputs/train/<name>; (its run folder, wall seconds)."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={workdir}", f"run_name={name}", *QUIET, *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_finetune: {' '.join(cmd[1:])} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return workdir / "outputs" / "train" / name, time.perf_counter() - start


def scalars(run: Path, metrics: tuple[str, ...]) -> dict[str, float]:
    """The last logged value of each of `metrics` in the run's TensorBoard events."""
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    return {m: round(events.Scalars(m)[-1].value, 4) for m in metrics if m in tags}


def fit_seconds(run: Path) -> float:
    """Training wall time of a run (Lightning's Timer, saved in last.ckpt when trainer.max_time is set)."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return float(ckpt["callbacks"]["Timer"]["time_elapsed"]["train"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", default=str(ROOT / "outputs/demo/make-demo/checkpoints/last.ckpt"),
                   help="the demo-trained checkpoint to fine-tune")
    p.add_argument("--folder", default="/usr/share/sonic-pi/samples", help="recordings (data=folder)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    p.add_argument("--workdir", default=None, help="paths.root_dir of the runs (default: a temporary folder)")
    p.add_argument("--finetune", nargs="*", default=[], help="extra overrides for the fine-tuning run only")
    args = p.parse_args()
    if not Path(args.init).is_file():
        raise SystemExit(f"bench_finetune: no checkpoint {args.init} (run `make demo`, or pass --init)")
    if not Path(args.folder).is_dir():
        raise SystemExit(f"bench_finetune: no folder {args.folder} (install sonic-pi-samples, or pass --folder)")
    data = ("data=folder", f"data.source.root={args.folder}")
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        workdir = Path(args.workdir or tmp)
        unchanged, _ = train(workdir, "unchanged", *data, f"init_from={args.init}", "trainer.max_epochs=0",
                             "trainer.min_epochs=0")
        tuned, tuned_wall = train(workdir, "finetuned", *data, f"init_from={args.init}",
                                  f"trainer.max_epochs={args.epochs}", "+trainer.max_time=00:12:00:00",
                                  *args.finetune)
        budget = fit_seconds(tuned)
        seconds = max(1, round(budget))
        # As many epochs as fine-tuning (so the learning-rate schedule has the same shape), stopped by the
        # same wall time should they take longer: same model, same data, so an epoch costs the same.
        scratch, scratch_wall = train(workdir, "scratch", *data, f"trainer.max_epochs={args.epochs}",
                                      f"+trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}")
        scratch_ckpt = torch.load(scratch / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        report = {
            "what": "finetune",
            "machine": machine(),
            "settings": {"init": args.init, "folder": args.folder, "finetune_epochs": args.epochs,
                         "finetune_overrides": args.finetune, "split": "test split of data=folder (seeded, by file)"},
            "figures": {
                "unchanged": scalars(unchanged, TEST),
                "finetuned": {**scalars(tuned, TEST + VAL), "epochs": args.epochs, "train_seconds": round(budget, 1),
                              "process_seconds": round(tuned_wall, 1)},
                "scratch": {**scalars(scratch, TEST + VAL), "epochs": int(scratch_ckpt["epoch"]) + 1,
                            "train_seconds": round(fit_seconds(scratch), 1), "process_seconds": round(scratch_wall, 1)},
            },
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
