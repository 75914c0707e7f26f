"""Prompt -> lyrics with a seeded text-generation pipeline (transformers), for lyrics conditioning."""
from __future__ import annotations

import logging
import unicodedata
from functools import lru_cache
from typing import Any

import torch

from musegen.text import load_pretrained, model_limit, validate_texts

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _lyrics_pipeline(model: str, device: str) -> Any:
    """Build (once per model/device) the text-generation pipeline; loading dominates the cost."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: PLC0415 - seconds to import

    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    net = load_pretrained(AutoModelForCausalLM.from_pretrained, model)
    log.info("loaded lyrics model %s on %s", model, device)
    return pipeline("text-generation", model=net.eval(), tokenizer=tokenizer, device=device)


def _clean_lyrics(generated: str, prompt: str) -> str:
    """Drop an echoed prompt and ragged whitespace, keep line breaks (they are the verse shape)."""
    text = generated[len(prompt):] if generated.startswith(prompt) else generated
    text = "".join(ch for ch in text  # control chars / broken bytes never belong in lyrics
                   if ch in "\n\t" or (ch != "\ufffd" and not unicodedata.category(ch).startswith("C")))
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:  # collapse runs of blank lines
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def _fit_prompt(generator: Any, prompt: str, max_new_tokens: int) -> str:
    """Keep the end of an over-long prompt (with a warning) so prompt + new tokens fit the
    model's positions; the end is what the continuation follows from."""
    limit = model_limit(generator.model.config, generator.tokenizer)
    if limit is None:
        return prompt
    if max_new_tokens >= limit:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be below the model limit {limit}")
    ids = generator.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    room = limit - max_new_tokens
    if len(ids) <= room:
        return prompt
    log.warning("lyrics prompt (%d tokens) is longer than the %d tokens left by max_new_tokens=%d; "
                "keeping its last %d tokens", len(ids), room, max_new_tokens, room)
    return generator.tokenizer.decode(ids[-room:])


def write_lyrics(prompt: str, model: str = "distilgpt2", max_new_tokens: int = 64, seed: int = 0,
                 device: str = "cpu") -> str:
    """Continue ``prompt`` into lyrics with a seeded sampling pipeline: same seed, same lyrics,
    without disturbing the caller's global RNG state."""
    (prompt,) = validate_texts([prompt])
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    generator = _lyrics_pipeline(model, device)
    prompt = _fit_prompt(generator, prompt, max_new_tokens)
    eos = generator.tokenizer.eos_token_id
    dev = torch.device(device)
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        result = generator(prompt or (generator.tokenizer.bos_token or ""), do_sample=True,
                           top_p=0.95, temperature=0.9, max_new_tokens=max_new_tokens,
                           min_new_tokens=min(8, max_new_tokens), return_full_text=False,
                           pad_token_id=eos)
    return _clean_lyrics(result[0]["generated_text"], prompt)
