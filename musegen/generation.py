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

from musegen.checkpoint import CheckpointError, load_predictor
from musegen.features import FeatureConfig, extract_file
from musegen.predictor import NextSegment
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
    """Generates feature frames from a trained module. Build it with `Generator.from_checkpoint`."""

    def __init__(self, module: NextSegment, encoder: TextEncoder, device: str = "auto", max_duration: float = 600.0,
                 threads: int | None = None):
        """``threads``: torch CPU threads while rolling out (None: leave torch's setting); see
        musegen.runtime.torch_threads for why one is often the fastest."""
        self.device = resolve_device(device)
        self.threads = threads
        self.module = module.to(self.device).eval()
        self.encoder = encoder
        self.features = FeatureConfig.from_dict(module.hparams.features)
        self.max_duration = max_duration

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", max_duration: float = 600.0,
                        threads: int | None = None) -> "Generator":
        module = load_predictor(path)
        return cls(module, encoder_from_config(module.hparams.text_encoder), device, max_duration, threads)

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
        return frames, torch.cat([frames.mean(0), frames.std(0, unbiased=False)])

    def num_frames(self, duration: float) -> int:
        """Frames whose synthesised audio (one hop per frame) covers `duration` seconds."""
        return int(math.ceil(duration * self.features.sample_rate / self.features.hop_length))

    def _check(self, duration: float, guidance: float, temperature: float, num_samples: int) -> None:
        if not 0 < duration <= self.max_duration:
            raise ValueError(f"duration must be in (0, {self.max_duration}] seconds, got {duration}")
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")

    # -- generation ----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, prompt: str | None = None, lyrics: str | None = None, audio: str | Path | None = None,
        duration: float = 20.0, guidance: float = 3.0, temperature: float = 0.5, seed: int = 0,
        num_samples: int = 1, progress: bool = False,
    ) -> GenerationResult:
        """Frames for `duration` seconds: continue `audio` when given, else start from nothing,
        steered by the prompt/lyrics with classifier-free guidance: uncond + guidance * (cond - uncond),
        so 0 ignores the text, 1 is the conditional model and larger values push further towards it."""
        self._check(duration, guidance, temperature, num_samples)
        start = time.perf_counter()
        text, text_used = self._text(prompt, lyrics)
        ref_frames, ref_embed = self._reference(audio)
        conditioned = time.perf_counter()
        with torch_threads(self.threads):
            frames = self._roll_out(text, ref_frames, ref_embed, self.num_frames(duration), guidance,
                                    temperature, seed, num_samples, progress)
        meta = {
            "prompt": prompt, "lyrics": lyrics, "text": text_used, "audio": str(audio) if audio else None,
            "duration": duration, "guidance": guidance, "temperature": temperature, "seed": seed,
            "num_samples": num_samples, "frames": int(frames.shape[1]),
            "conditioning_seconds": conditioned - start,  # text encoder (loaded on first use), reference features
            "generation_seconds": time.perf_counter() - start,
        }
        return GenerationResult(frames=frames, features=self.features, metadata=meta)

    def _initial_context(self, ref_frames: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, f = self.module.hparams.context_frames, self.module.feature_dim
        context = torch.zeros(n, c, f, device=self.device)
        mask = torch.zeros(n, c, dtype=torch.bool, device=self.device)
        if ref_frames is not None:
            tail = ref_frames[-c:]
            context[:, c - len(tail):] = tail
            mask[:, c - len(tail):] = True
        return context, mask

    def _roll_out(
        self, text: torch.Tensor | None, ref_frames: torch.Tensor | None, ref_embed: torch.Tensor | None,
        total: int, guidance: float, temperature: float, seed: int, n: int, progress: bool,
    ) -> np.ndarray:
        m = self.module
        rng = torch.Generator(device=self.device).manual_seed(seed)
        context, mask = self._initial_context(ref_frames, n)
        cond = self._conditioning(text, ref_embed, n)
        out: list[torch.Tensor] = []
        steps = math.ceil(total / m.hparams.segment_frames)
        for _ in tqdm(range(steps), desc="generating", unit="segment", disable=not progress):
            pred = self._guided(context, mask, cond, guidance)
            pred = pred + temperature * m.resid_std * torch.randn(pred.shape, generator=rng, device=self.device)
            new = self._to_frames(pred)
            out.append(new)
            context = torch.cat([context, new], dim=1)[:, -context.shape[1]:]
            mask = torch.cat([mask, torch.ones(new.shape[:2], dtype=torch.bool, device=self.device)], 1)[:, -mask.shape[1]:]
        return torch.cat(out, dim=1)[:, :total].float().cpu().numpy()

    def _conditioning(self, text: torch.Tensor | None, ref_embed: torch.Tensor | None, n: int) -> torch.Tensor:
        """The conditioning vectors, the same at every step: n rows without text; with text, 2n rows,
        the n conditional ones then the n with the null text that guidance contrasts them with."""
        m = self.module
        text_b = (text if text is not None else torch.zeros(1, m.net.null_text.numel(), device=self.device)).expand(n, -1)
        ref_b = (ref_embed if ref_embed is not None else torch.zeros(2 * m.feature_dim, device=self.device)).expand(n, -1)
        drop_ref = torch.full((n,), ref_embed is None, device=self.device)
        if text is None:
            return m.conditioning(text_b, ref_b, torch.ones(n, dtype=torch.bool, device=self.device), drop_ref)
        drop_text = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(self.device)
        return m.conditioning(text_b.repeat(2, 1), ref_b.repeat(2, 1), drop_text, drop_ref.repeat(2))

    def _guided(self, context: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        """out = uncond + guidance * (cond - uncond), both halves in one batched forward."""
        n = context.shape[0]
        if cond.shape[0] == n:
            return self.module.predict_with(context, mask, cond)
        both = self.module.predict_with(context.repeat(2, 1, 1), mask.repeat(2, 1), cond)
        conditional, unconditional = both[:n], both[n:]
        return unconditional + guidance * (conditional - unconditional)

    def _to_frames(self, pred: torch.Tensor) -> torch.Tensor:
        """Normalised prediction -> raw frames [n, K, F]; chroma kept in [0, 1]; missing chroma = train mean."""
        m = self.module
        raw = m.denormalise(pred)
        if raw.shape[-1] < m.feature_dim:
            fill = m.mean[raw.shape[-1]:].expand(*raw.shape[:2], -1)
            raw = torch.cat([raw, fill], dim=-1)
        raw[..., m.n_mfcc:] = raw[..., m.n_mfcc:].clamp(0.0, 1.0)
        return raw
