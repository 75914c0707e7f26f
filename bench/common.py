"""What every benchmark reports about the machine it ran on."""
from __future__ import annotations

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
