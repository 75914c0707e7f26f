"""Feature frames -> waveform with a small network trained on the user's own audio.

One backbone for both heads: an input convolution over frames, ConvNeXt blocks (depthwise kernel
``kernel`` across neighbouring frames, LayerNorm, pointwise MLP, layer scale) and a final
LayerNorm, as in Vocos (Siuzdenko et al., 2023). The head decides how audio is made:

- ``istft``: per frame, a log-magnitude and a phase angle for each of the n_fft // 2 + 1 bins,
  turned into audio by one inverse STFT with the features' own n_fft and hop, so one frame gives
  one hop of audio and no iterative phase recovery is needed (Vocos' head).
- ``griffin_lim``: per frame, a log-magnitude only; audio by musegen.audio's Griffin-Lim.

Inputs are normalised by the per-dimension mean and std of the training frames, kept as buffers,
so a checkpoint alone rebuilds the vocoder (no Lightning here).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from musegen.audio import Synthesizer, as_tensor, check_frames, flush_denormal, to_numpy
from musegen.features import FeatureConfig

HEADS = ("istft", "griffin_lim")
#: exp() of a predicted log-magnitude is capped here (as Vocos does), so an early outlier cannot overflow.
MAX_LOG_MAGNITUDE = float(np.log(1e2))


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over time (context across frames), LayerNorm, pointwise MLP, scaled residual."""

    def __init__(self, dim: int, intermediate: int, kernel: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, intermediate)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, dim, T] -> [B, dim, T]."""
        h = self.dwconv(x).transpose(1, 2)
        h = self.pw2(self.act(self.pw1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class Vocoder(nn.Module):
    """[B, T, dim] frames -> [B, T * hop] audio. ``hparams`` (plain data) rebuild it: Vocoder(**hparams)."""

    def __init__(
        self,
        features: dict[str, Any],
        head: str = "istft",
        dim: int = 128,
        intermediate: int = 384,
        blocks: int = 4,
        kernel: int = 7,
        layer_scale: float = 0.1,
        gl_iters: int = 16,
        threads: int | None = 1,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"vocoder head must be one of {HEADS}, got {head!r}")
        for name, value in dict(dim=dim, intermediate=intermediate, blocks=blocks, gl_iters=gl_iters).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"vocoder {name} must be an int >= 1, got {value!r}")
        if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"vocoder kernel must be an odd int >= 1, got {kernel!r}")
        self.features = FeatureConfig.from_dict(dict(features))
        self.hparams = dict(features=self.features.to_dict(), head=head, dim=dim, intermediate=intermediate,
                            blocks=blocks, kernel=kernel, layer_scale=layer_scale, gl_iters=gl_iters,
                            threads=threads)
        self.head, self.gl_iters, self.threads = head, gl_iters, threads
        in_dim, n_freq = self.features.dim, self.features.n_fft // 2 + 1
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.embed = nn.Conv1d(in_dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate, kernel, layer_scale) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.out = nn.Linear(dim, n_freq * (2 if head == "istft" else 1))
        self._synths: dict[str, Synthesizer] = {}

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics of the training frames (std already floored by the caller)."""
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))

    def synthesizer(self, device: torch.device) -> Synthesizer:
        """musegen.audio's STFT/iSTFT/Griffin-Lim on ``device``, built once per device."""
        key = str(device)
        if key not in self._synths:
            with torch.inference_mode(False):  # first use may be in validation; training reuses it
                self._synths[key] = Synthesizer(self.features, n_iter=self.gl_iters, device=device)
        return self._synths[key]

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, T, dim] frames -> (log-magnitude [B, T, F], phase [B, T, F] or None for griffin_lim)."""
        x = ((frames - self.mean) / self.std).transpose(1, 2)
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        out = self.out(self.final_norm(x.transpose(1, 2)))
        if self.head == "griffin_lim":
            return out, None
        log_mag, phase = out.chunk(2, dim=-1)
        return log_mag, phase

    def waveform(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, dim] -> [B, T * hop]; differentiable for the istft head (Griffin-Lim is not)."""
        log_mag, phase = self(frames)
        return self.to_audio(log_mag, phase, frames.shape[-2] * self.features.hop_length)

    def to_audio(self, log_mag: torch.Tensor, phase: torch.Tensor | None, length: int) -> torch.Tensor:
        """The head's output -> [B, length] audio: one inverse STFT, or Griffin-Lim without a phase."""
        synth = self.synthesizer(log_mag.device)
        magnitude = torch.exp(torch.clamp(log_mag.float(), max=MAX_LOG_MAGNITUDE))
        if phase is None:
            return synth.griffin_lim(magnitude, length)
        return synth.istft(torch.polar(magnitude, phase.float()), length)

    @torch.no_grad()
    def render(self, frames: torch.Tensor | np.ndarray, mode: str = "vocoder",
               register: int | None = None) -> np.ndarray:
        """[T, dim] or [B, T, dim] frames -> float32 [T * hop] or [B, T * hop]: Synthesizer.render's
        contract, so either renders generate.py's audio. `mode` and `register` are accepted for that
        contract and unused: a vocoder has learnt timbre and register from its training audio."""
        device = self.mean.device
        f = as_tensor(frames)
        check_frames(f, self.features.dim, "frames")
        batched = f.reshape(-1, *f.shape[-2:]).to(device)
        was_training = self.training
        self.eval()
        try:
            with flush_denormal(self.threads if device.type == "cpu" else None):
                y = self.waveform(batched)
        finally:
            self.train(was_training)
        return to_numpy(y.reshape(*f.shape[:-2], -1))
