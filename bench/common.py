"""What the benchmarks share: the machine they ran on, one batched generation per prompt list, the trained cache."""
from __future__ import annotations

import argparse
import os
import platform


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1m": os.getloadavg()[0],
    }


def generate_each(model, prompts: list[str], **kwargs) -> tuple[list, list]:
    """(waveforms, frames) of the prompts in one batched ``model.generate`` call, prompt i with seed i.

    One seed for the whole call would give every prompt the same random stream, so their figures
    would move together; a seed per prompt keeps them independent.
    """
    music = model.generate(prompts, seed=list(range(len(prompts))), progress=False, **kwargs)
    return list(music.waveforms), list(music.frames)


def trained_cache(path: str | None, ckpt: str, model):
    """The feature cache a checkpoint was trained on: the one at ``path`` (``--cache``) or, without it,
    the one its run folder's data config builds, as evaluate.py finds its test split; or one line
    saying why there is none."""
    from musegen.apps.evaluate import build_datamodule, training_data_config
    from musegen.data.cache import CacheError, load_cache

    if path is None:
        data = training_data_config(ckpt)
        if data is None:
            raise ValueError(f"--ckpt {ckpt}: no run folder beside it (.hydra/config.yaml) names its training "
                             "data; pass --cache data/cache/<key>")
        return build_datamodule(data, model.generator).cache
    try:
        return load_cache(path)
    except CacheError:
        raise ValueError(f"--cache {path} is not a complete feature cache (train.py builds them under "
                         "data/cache/)") from None


def checkpoint_and_cache_parser(doc: str, prompts: int) -> argparse.ArgumentParser:
    """The arguments of the benches that read a checkpoint beside the cache it was trained on:
    --ckpt, --cache, --every (n-th cached clip), --prompts (held-out, ``prompts`` by default), --seconds."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--cache", help="the feature cache the checkpoint was trained on (data/cache/<key>; default: the "
                   "one its run folder's data config builds)")
    p.add_argument("--every", type=int, default=5, help="read every n-th cached clip")
    p.add_argument("--prompts", type=int, default=prompts, help="held-out prompts, evenly over the instruments")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds generated per prompt")
    return p
