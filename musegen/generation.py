"""Checkpoint -> feature frames of any length, segment by segment, with classifier-free guidance."""
from __future__ import annotations

import json
import logging
import math
import time
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
from musegen.model.heads import Sampling
from musegen.model.muse import MuseModel
from musegen.runtime import torch_threads
from musegen.text import TextEncoder, is_null_text

log = logging.getLogger(__name__)

_ENCODER_NAMESPACE = "musegen.text."


@dataclass
class GenerationResult:
    frames: np.ndarray                 # [num_samples, T, 32] raw (unnormalised) features
    features: FeatureConfig
    metadata: dict[str, Any] = field(default_factory=dict)


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

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", max_duration: float = 600.0,
                        threads: int | None = None) -> Generator:
        model = load_model(path)
        return cls(model, encoder_from_config(model.text_encoder), device, max_duration, threads)

    # -- conditioning --------------------------------------------------------------------------
    def _text(self, prompt: str | None, lyrics: str | None) -> tuple[torch.Tensor | None, str]:
        parts = [t.strip() for t in (prompt, lyrics) if not is_null_text(t)]
        text = ". ".join(parts)
        if not text:
            return None, ""
        return self.encoder.encode([text]).to(self.device), text

    def _reference(self, audio: str | Path | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Reference frames [T, F] and pooled embedding [2F], or (None, None) for a neutral start."""
        if audio is None:
            return None, None
        frames = torch.from_numpy(extract_file(audio, self.features)).to(self.device)
        return frames, reference_embedding(frames)

    def num_frames(self, duration: float) -> int:
        """Frames whose synthesised audio (one hop per frame) covers `duration` seconds."""
        return int(math.ceil(duration * self.features.sample_rate / self.features.hop_length))

    def sampling(self, guidance: float | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None) -> dict[str, Any]:
        """The sampling settings of a call: each one given, else the checkpoint's default for its head."""
        given = dict(guidance=guidance, temperature=temperature, top_k=top_k, top_p=top_p)
        chosen = {k: v if v is not None else self.model.default_sampling.get(k) for k, v in given.items()}
        for name in ("guidance", "temperature"):
            if chosen[name] is None:
                raise ValueError(f"{name}: not given, and the checkpoint has no default for it")
            if chosen[name] < 0:
                raise ValueError(f"{name} must be >= 0, got {chosen[name]}")
        if chosen["top_k"] is not None and chosen["top_k"] < 1:
            raise ValueError(f"top_k must be >= 1 or null, got {chosen['top_k']}")
        if chosen["top_p"] is not None and not 0 < chosen["top_p"] <= 1:
            raise ValueError(f"top_p must be in (0, 1] or null, got {chosen['top_p']}")
        return chosen

    # -- generation ----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, prompt: str | None = None, lyrics: str | None = None, audio: str | Path | None = None,
        duration: float = 20.0, guidance: float | None = None, temperature: float | None = None,
        top_k: int | None = None, top_p: float | None = None, seed: int = 0, num_samples: int = 1,
        progress: bool = False,
    ) -> GenerationResult:
        """Frames for `duration` seconds: continue `audio` when given, else start from nothing,
        steered by the prompt/lyrics with classifier-free guidance (musegen.model.conditioning:
        0 ignores the text, 1 is the conditional model, larger values push further towards it).
        Sampling settings left None take the checkpoint's defaults for its head."""
        if not 0 < duration <= self.max_duration:
            raise ValueError(f"duration must be in (0, {self.max_duration}] seconds, got {duration}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        sampling = self.sampling(guidance, temperature, top_k, top_p)
        start = time.perf_counter()
        text, text_used = self._text(prompt, lyrics)
        ref_frames, ref_embed = self._reference(audio)
        conditioned = time.perf_counter()
        with torch_threads(self.threads):
            frames = self._roll_out(text, ref_frames, ref_embed, self.num_frames(duration), sampling, seed,
                                    num_samples, progress)
        meta = {
            "prompt": prompt, "lyrics": lyrics, "text": text_used, "audio": str(audio) if audio else None,
            "duration": duration, **sampling, "seed": seed,
            "num_samples": num_samples, "frames": int(frames.shape[1]),
            "conditioning_seconds": conditioned - start,  # text encoder (loaded on first use), reference features
            "generation_seconds": time.perf_counter() - start,
        }
        return GenerationResult(frames=frames, features=self.features, metadata=meta)

    def _initial_context(self, ref_frames: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, f = self.model.context_frames, self.model.feature_dim
        context = torch.zeros(n, c, f, device=self.device)
        mask = torch.zeros(n, c, dtype=torch.bool, device=self.device)
        if ref_frames is not None:
            tail = ref_frames[-c:]
            context[:, c - len(tail):] = tail
            mask[:, c - len(tail):] = True
        return context, mask

    def _roll_out(
        self, text: torch.Tensor | None, ref_frames: torch.Tensor | None, ref_embed: torch.Tensor | None,
        total: int, sampling: dict[str, Any], seed: int, n: int, progress: bool,
    ) -> np.ndarray:
        """Segment after segment: the model reads the last context_frames frames (the reference's
        tail, then its own output) and samples the next segment_frames."""
        m = self.model
        rng = torch.Generator(device=self.device).manual_seed(seed)
        context, mask = self._initial_context(ref_frames, n)
        cond, guided = m.generation_rows(text, ref_embed, n)  # the same at every step: computed once
        settings = Sampling(**{**sampling, "guidance": sampling["guidance"] if guided else None})
        out: list[torch.Tensor] = []
        steps = math.ceil(total / m.segment_frames)
        for _ in tqdm(range(steps), desc="generating", unit="segment", disable=not progress):
            new = m.next_frames(context, mask, cond, settings, rng)
            out.append(new)
            context = torch.cat([context, new], dim=1)[:, -context.shape[1]:]
            real = torch.ones(new.shape[:2], dtype=torch.bool, device=self.device)
            mask = torch.cat([mask, real], 1)[:, -mask.shape[1]:]
        return torch.cat(out, dim=1)[:, :total].float().cpu().numpy()
