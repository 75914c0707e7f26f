"""Training throughput: samples/s of the Lightning loop vs a bare PyTorch loop, same module and batches.

Prints one JSON object. Both loops run the module's own forward and loss; runs alternate A/B and the
median of each is reported, so the ratio is measured under the same conditions.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from musegen.module import MuseModule  # noqa: E402

FEATURES = dict(sample_rate=22050, n_mfcc=20, n_chroma=12, n_fft=2048, hop_length=512, n_mels=128)


class Windows(Dataset):
    """Fixed random windows in the datamodule's batch format (features are not the point here)."""

    def __init__(self, n: int, c: int, k: int, d: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ctx, self.tgt = torch.randn(n, c, 32, generator=g), torch.randn(n, k, 32, generator=g)
        self.text, self.ref = torch.randn(n, d, generator=g), torch.randn(n, 64, generator=g)

    def __len__(self) -> int:
        return len(self.ctx)

    def __getitem__(self, i: int) -> dict:
        return {"context": self.ctx[i], "context_mask": torch.ones(len(self.ctx[i]), dtype=torch.bool),
                "target": self.tgt[i], "text": self.text[i], "reference": self.ref[i], "label": 0}


def make_module(args) -> MuseModule:
    head = {"_target_": "musegen.model.heads.MSEHead", "hidden": 2 * args.hidden, "dropout": 0.1}
    return MuseModule(features=FEATURES, text_encoder={"_target_": "musegen.text.SentenceEncoder"}, text_dim=384,
                      backbone=dict(hidden=args.hidden, layers=args.layers, dropout=0.1, fusion="film"), head=head,
                      context_frames=args.context, segment_frames=args.segment)


def bare(args, loader) -> float:
    torch.manual_seed(0)
    m = make_module(args).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    start, n = time.perf_counter(), 0
    for batch in loader:
        mask, drop_text, drop_ref = m.dropout(batch["context_mask"])  # what training_step does, minus logging
        cond = m.model.condition(batch["text"], batch["reference"], drop_text, drop_ref)
        loss = m.model.loss(batch["context"], mask, cond, batch["target"])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        n += len(batch["target"])
    return n / (time.perf_counter() - start)


class _Clock(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_loop(args, loader) -> float:
    torch.manual_seed(0)
    clock = _Clock()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                        gradient_clip_val=1.0, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(make_module(args), train_dataloaders=loader)
    return len(loader.dataset) / clock.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--context", type=int, default=32)
    p.add_argument("--segment", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (train.py's torch_threads)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = Windows(args.batches * args.batch_size, args.context, args.segment, 384)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    runs = {"bare": [], "lightning": []}
    for _ in range(args.repeats):
        runs["bare"].append(bare(args, loader))
        runs["lightning"].append(lightning_loop(args, loader))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(json.dumps({
        "what": "training_throughput", "machine": machine(), "settings": vars(args),
        "figures": {"bare_samples_per_s": round(med["bare"], 1), "lightning_samples_per_s": round(med["lightning"], 1),
                    "lightning_over_bare": round(med["lightning"] / med["bare"], 3),
                    "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()}},
    }))


if __name__ == "__main__":
    main()
