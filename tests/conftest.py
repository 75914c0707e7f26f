"""Shared pytest fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# librosa's numba kernels cache compiled code beside the package; processes compiling the same kernel at
# once (the cache build's workers, the subprocesses these tests start) can leave a cache entry that
# crashes the next process to load it. One private cache per test session, inherited by subprocesses.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="musegen-numba-"))

_TINY_CORPUS = [
    "calm piano melody in the evening",
    "soft piano music with a slow violin",
    "aggressive drum solo at a fast tempo",
    "upbeat electronic dance track with a heavy bass",
    "a gentle guitar song about the sea and the moon",
    "we sing together under the stars tonight",
    "the river runs and the wind is singing",
    "love and light and a melody that never ends",
]


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (random-weight) 2-layer GPT-2 and a BPE tokenizer trained here, saved with
    save_pretrained: exercises the genuine transformers loading/generation path offline, in a second."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    eos = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_TINY_CORPUS * 4, vocab_size=500, min_frequency=1, special_tokens=[eos])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=eos, eos_token=eos,
                                        unk_token=eos, model_max_length=128)
    tokenizer.save_pretrained(folder)
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_layer=2, n_head=2, n_embd=32,
                        bos_token_id=eos_id, eos_token_id=eos_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *overrides: str, timeout: int = 600, check: bool = True,
               env: dict[str, str] | None = None, cwd: Path = ROOT):
    """Run one of the repo's Hydra entry points as a user would, in a subprocess (offline, plus `env`),
    started in `cwd`."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    out = subprocess.run([sys.executable, str(ROOT / script), *overrides], capture_output=True, text=True,
                         cwd=cwd, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} {' '.join(overrides)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One `train.py experiment=smoke` run shared by the tests that need a trained checkpoint:
    {"root": paths.root_dir, "run": the run folder, "ckpt": its last.ckpt}."""
    root = tmp_path_factory.mktemp("smoke")
    run_script("train.py", "experiment=smoke", f"paths.root_dir={root}", "run_name=run")
    run = root / "outputs" / "smoke" / "run"
    return {"root": root, "run": run, "ckpt": run / "checkpoints" / "last.ckpt"}
