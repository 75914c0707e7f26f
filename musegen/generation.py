"""Checkpoint -> feature frames of any length, segment by segment, with classifier-free guidance."""
from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from tqdm.auto import tqdm

from musegen.checkpoint import CheckpointError, load_model
from musegen.features import FeatureConfig, extract_file
from musegen.model.conditioning import reference_embedding
from musegen.model.heads import Noise, Sampling
from musegen.model.muse import MuseModel
from musegen.runtime import torch_threads
from musegen.text import TextEncoder, is_null_text

log = logging.getLogger(__name__)

_ENCODER_NAMESPACE = "musegen.text."


#: one item of a generation batch: (prompt, lyrics, reference audio, seed)
Item = tuple[str | None, str | None, Path | None, int]
#: progress(done, total) after each generated segment
ProgressFn = Callable[[int, int], None]


@dataclass
class GenerationResult:
    frames: np.ndarray                 # [items, T, 32] raw (unnormalised) features
    features: FeatureConfig
    metadata: dict[str, Any] = field(default_factory=dict)     # what every item shares
    items: list[dict[str, Any]] = field(default_factory=list)  # per item: prompt, lyrics, text, audio, seed


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def encoder_from_config(config: dict) -> TextEncoder:
    """Rebuild the checkpoint's text encoder; only musegen's own encoder classes may be named.

    The process keeps the last two encoders built, so later generations in one process (a Hydra
    multirun over prompts, a notebook, a service) do not load the text model again.
    """
    target = str(config.get("_target_", ""))
    if not target.startswith(_ENCODER_NAMESPACE):
        raise CheckpointError(f"checkpoint names text encoder {target!r}, outside {_ENCODER_NAMESPACE}*")
    return _encoder(json.dumps(dict(config), sort_keys=True, default=str))


@lru_cache(maxsize=2)
def _encoder(config_json: str) -> TextEncoder:
    return instantiate(json.loads(config_json))


class Generator:
    """Generates feature frames from a trained MuseModel. Build it with `Generator.from_checkpoint`."""

    def __init__(self, model: MuseModel, encoder: TextEncoder, device: str = "auto", max_duration: float = 600.0,
                 threads: int | None = None):
        """``threads``: torch CPU threads while rolling out (None: leave torch's setting); see
        musegen.runtime.torch_threads for why one is often the fastest."""
        self.device = resolve_device(device)
        self.threads = threads
        self.model = model.to(self.device).eval()
        self.encoder = encoder
        self.features: FeatureConfig = model.features
        self.max_duration = max_duration
        self._texts: dict[str, torch.Tensor] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", max_duration: float = 600.0,
                        threads: int | None = None) -> Generator:
        model = load_model(path)
        return cls(model, encoder_from_config(model.text_encoder), device, max_duration, threads)

    # -- conditioning --------------------------------------------------------------------------
    def _text(self, prompt: str | None, lyrics: str | None) -> tuple[torch.Tensor | None, str]:
        """The embedding [text_dim] of prompt and lyrics together (None without either), and that text.
        Each text is encoded once per Generator, and on its own, so an item's embedding never depends
        on the batch it is in."""
        parts = [t.strip() for t in (prompt, lyrics) if not is_null_text(t)]
        text = ". ".join(parts)
        if not text:
            return None, ""
        if text not in self._texts:
            self._texts[text] = self.encoder.encode([text])[0].to(self.device)
        return self._texts[text], text

    def _reference(self, audio: Path | None) -> torch.Tensor | None:
        """Reference frames [T, F], or None for a neutral start."""
        if audio is None:
            return None
        return torch.from_numpy(extract_file(audio, self.features)).to(self.device)

    def num_frames(self, duration: float) -> int:
        """Frames whose synthesised audio (one hop per frame) covers `duration` seconds."""
        return int(math.ceil(duration * self.features.sample_rate / self.features.hop_length))

    def sampling(self, guidance: float | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None,
                 pitch_temperature: float | None = None, min_note_frames: int | None = None) -> dict[str, Any]:
        """The sampling settings of a call: each one given, else the checkpoint's default for its head."""
        given = dict(guidance=guidance, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                     pitch_temperature=pitch_temperature, min_note_frames=min_note_frames)
        chosen = {k: v if v is not None else self.model.default_sampling.get(k) for k, v in given.items()}
        for name in ("guidance", "temperature"):
            if chosen[name] is None:
                raise ValueError(f"{name}: not given, and the checkpoint has no default for it")
            if chosen[name] < 0:
                raise ValueError(f"{name} must be >= 0, got {chosen[name]}")
        for name in ("top_k", "min_note_frames"):   # counts: 2.5 tokens or frames means nothing
            value = chosen[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or null, got {value!r}")
        if chosen["top_p"] is not None and not 0 < chosen["top_p"] <= 1:
            raise ValueError(f"top_p must be in (0, 1] or null, got {chosen['top_p']}")
        if chosen["min_p"] is not None and not 0 <= chosen["min_p"] < 1:
            raise ValueError(f"min_p must be in [0, 1) or null, got {chosen['min_p']}")
        if chosen["pitch_temperature"] is not None and chosen["pitch_temperature"] < 0:
            raise ValueError(f"pitch_temperature must be >= 0 or null, got {chosen['pitch_temperature']}")
        return chosen

    # -- generation ----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, prompt: str | None | Sequence[str | None] = None, lyrics: str | None | Sequence[str | None] = None,
        audio: str | Path | None | Sequence[str | Path | None] = None, duration: float = 20.0,
        guidance: float | None = None, temperature: float | None = None, top_k: int | None = None,
        top_p: float | None = None, min_p: float | None = None, pitch_temperature: float | None = None,
        min_note_frames: int | None = None, seed: int | Sequence[int] = 0, num_samples: int = 1,
        progress: bool | ProgressFn = False,
    ) -> GenerationResult:
        """Frames for `duration` seconds per item, all items in one batched rollout.

        ``prompt`` is one prompt or a list of them; ``lyrics`` and ``audio`` (a reference to continue)
        are one value for all prompts or a list with one per prompt, and so is ``seed``. Each prompt
        gets ``num_samples`` variations, variation j drawn with its seed + j from its own random
        stream, so an item's frames are those of a call with that prompt and seed alone (one seed for
        every prompt gives each prompt the same random stream: a batch of prompts then differs only
        in its text). Steered by the text with classifier-free guidance
        (musegen.model.conditioning: 0 ignores the text, 1 is the conditional model, larger values
        push further towards it); sampling settings left None take the checkpoint's defaults.
        ``progress``: a bar (True) or a function called with (segments done, segments in all).
        """
        if not 0 < duration <= self.max_duration:
            raise ValueError(f"duration must be in (0, {self.max_duration}] seconds, got {duration}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        sampling = self.sampling(guidance, temperature, top_k, top_p, min_p, pitch_temperature, min_note_frames)
        items = batch_items(prompt, lyrics, audio, seed, num_samples)
        start = time.perf_counter()
        texts = [self._text(p, lyr) for p, lyr, _, _ in items]
        refs = {a: self._reference(a) for a in dict.fromkeys(a for _, _, a, _ in items)}
        conditioned = time.perf_counter()
        with torch_threads(self.threads):
            frames = self._roll_out([t for t, _ in texts], [refs[a] for _, _, a, _ in items],
                                    self.num_frames(duration), sampling, [s for *_, s in items], progress)
        meta = {
            "duration": duration, **sampling,
            "seed": int(seed) if isinstance(seed, numbers.Integral) else [int(s) for s in seed],
            "num_samples": num_samples,
            "frames": int(frames.shape[1]),
            "conditioning_seconds": conditioned - start,  # text encoder (loaded on first use), reference features
            "generation_seconds": time.perf_counter() - start,
        }
        described = [{"prompt": p, "lyrics": lyr, "text": used, "audio": str(a) if a else None, "seed": s}
                     for (p, lyr, a, s), (_, used) in zip(items, texts)]
        return GenerationResult(frames=frames, features=self.features, metadata=meta, items=described)

    def _roll_out(self, texts: list[torch.Tensor | None], refs: list[torch.Tensor | None], total: int,
                  sampling: dict[str, Any], seeds: list[int], progress: bool | ProgressFn) -> np.ndarray:
        """Segment after segment: the model reads each item's last context_frames frames (its
        reference's tail, then its own output) and samples the next segment_frames."""
        m, n, c, f = self.model, len(seeds), self.model.context_frames, self.model.feature_dim
        context = torch.zeros(n, c, f, device=self.device)
        mask = torch.zeros(n, c, dtype=torch.bool, device=self.device)
        reference = torch.zeros(n, 2 * f, device=self.device)
        for i, ref in enumerate(refs):
            if ref is not None:
                tail = ref[-c:]
                context[i, c - len(tail):], mask[i, c - len(tail):] = tail, True
                reference[i] = reference_embedding(ref)
        text = torch.stack([t if t is not None else torch.zeros_like(m.conditioner.null_text) for t in texts])
        has_text = torch.tensor([t is not None for t in texts], device=self.device)
        has_ref = torch.tensor([r is not None for r in refs], device=self.device)
        cond, guided = m.generation_rows(text, reference, has_text, has_ref)  # the same at every step
        settings = Sampling(**{**sampling, "guidance": sampling["guidance"] if guided else None})
        noise = Noise(seeds, self.device)
        start, start_mask = context, mask
        out: list[torch.Tensor] = []
        steps = math.ceil(total / m.segment_frames)
        for step in tqdm(range(steps), desc="generating", unit="segment", disable=progress is not True):
            new = m.next_frames(context, mask, cond, settings, noise)
            out.append(new)
            context = torch.cat([context, new], dim=1)[:, -c:]
            mask = torch.cat([mask, torch.ones(new.shape[:2], dtype=torch.bool, device=self.device)], 1)[:, -c:]
            if callable(progress):
                progress(step + 1, steps)
        return m.finish(torch.cat(out, dim=1), start, start_mask)[:, :total].float().cpu().numpy()


def batch_items(prompt: str | None | Sequence[str | None], lyrics: str | None | Sequence[str | None],
                audio: str | Path | None | Sequence[str | Path | None], seed: int | Sequence[int],
                num_samples: int) -> list[Item]:
    """The items of a generation call: each prompt with its lyrics, reference and seed, num_samples
    times (seeds s, s + 1, ...). A single value of lyrics, audio or seed goes with every prompt."""
    prompts = [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt: an empty list; give a prompt, a list of prompts or null")

    def per_prompt(name: str, value: Any) -> list[Any]:
        if value is None or isinstance(value, (str, Path, numbers.Integral)):
            return [value] * len(prompts)
        values = list(value)
        if len(values) != len(prompts):
            raise ValueError(f"{name}: {len(values)} values for {len(prompts)} prompts; "
                             "give one per prompt or one for all")
        return values

    for p in prompts:
        if p is not None and not isinstance(p, str):
            raise ValueError(f"prompt: {p!r} is not text")
    refs = [None if a is None else Path(a) for a in per_prompt("audio", audio)]
    seeds = per_prompt("seed", seed)
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise ValueError(f"seed: {s!r} is not an integer")
    seeds = [int(s) for s in seeds]
    return [(p, lyr, a, s + j) for p, lyr, a, s in zip(prompts, per_prompt("lyrics", lyrics), refs, seeds)
            for j in range(num_samples)]
