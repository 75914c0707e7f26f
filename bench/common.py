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
    """(waveforms, frames) of one ``model.generate`` call per prompt, prompt i with seed i.

    A batched call gives every prompt the call's seed, so all its prompts would draw the same
    sampling noise and their figures would move together; one stream per prompt keeps them independent.
    """
    waveforms, frames = [], []
    for i, prompt in enumerate(prompts):
        music = model.generate(prompt, seed=i, progress=False, **kwargs)
        waveforms.append(music.waveforms[0])
        frames.append(music.frames[0])
    return waveforms, frames
