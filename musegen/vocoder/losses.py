"""Training losses and the validation distance of the vocoder, batched torch on any device.

- multi-resolution STFT loss (Yamamoto et al., Parallel WaveGAN): at each (n_fft, hop), spectral
  convergence ||S - S^||_F / ||S||_F plus L1 between log magnitudes; mean over resolutions;
- mel loss: L1 between natural-log mel spectrograms (HiFi-GAN, Vocos);
- log-magnitude loss: L1 between the head's predicted log-magnitude and the clip's own, frame by frame
  (what the griffin_lim head trains on, and a direct signal for the istft head's magnitude);
- chroma loss: L1 between the chroma of the rendered audio (librosa's chroma_stft filterbank on its
  power spectrum, each frame scaled to a peak of 1, as musegen.features) and the input frames' own
  chroma: the pitch classes a listener hears are what the frames ask for, which the spectral losses
  weigh only as a few bins among a thousand;
- log-spectral distance, the validation metric: per frame, the RMS over frequency bins of
  log10(power + eps) differences, averaged over frames.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from musegen.dsp import mel_filterbank

#: power floor for log-spectral distance (-100 dB re 1): keeps silent bins from dominating
LSD_EPS = 1e-10
LOG_EPS = 1e-5


def _magnitude(y: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """[B, L] -> [B, F, T] magnitude (center=True, constant padding, as musegen.features)."""
    spec = torch.stft(y.float(), n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    return spec.abs()


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1 at several (n_fft, hop) resolutions."""

    def __init__(self, resolutions: Sequence[Sequence[int]] = ((512, 128), (1024, 256), (2048, 512))) -> None:
        super().__init__()
        self.resolutions = [(int(n), int(h)) for n, h in resolutions]
        for i, (n, _) in enumerate(self.resolutions):
            self.register_buffer(f"window{i}", torch.hann_window(n), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for i, (n_fft, hop) in enumerate(self.resolutions):
            window = getattr(self, f"window{i}")
            p, t = _magnitude(pred, n_fft, hop, window), _magnitude(target, n_fft, hop, window)
            sc = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp_min(LOG_EPS)
            mag = F.l1_loss(torch.log(p.clamp_min(LOG_EPS)), torch.log(t.clamp_min(LOG_EPS)))
            total = total + sc + mag
        return total / len(self.resolutions)


class MelLoss(nn.Module):
    """L1 between log mel spectrograms of prediction and target (librosa's Slaney mel filterbank)."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        mel = mel_filterbank(sample_rate, n_fft, n_mels)
        self.register_buffer("mel", torch.tensor(mel, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def log_mel(self, y: torch.Tensor) -> torch.Tensor:
        return torch.log((self.mel @ _magnitude(y, self.n_fft, self.hop, self.window)).clamp_min(LOG_EPS))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self.log_mel(pred), self.log_mel(target))


class ChromaLoss(nn.Module):
    """L1 between the chroma of [B, T, F] magnitudes and [B, T, n_chroma] target chroma (peak-normalised)."""

    def __init__(self, sample_rate: int, n_fft: int, n_chroma: int) -> None:
        super().__init__()
        import librosa  # noqa: PLC0415  (training only: generation never builds a loss)

        fb = librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, n_chroma=n_chroma)
        self.register_buffer("fb", torch.tensor(fb.T, dtype=torch.float32), persistent=False)

    def chroma(self, magnitude: torch.Tensor) -> torch.Tensor:
        c = (magnitude.float() ** 2) @ self.fb
        return c / c.amax(dim=-1, keepdim=True).clamp_min(LSD_EPS)

    def forward(self, magnitude: torch.Tensor, target_chroma: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self.chroma(magnitude), target_chroma.float())


def log_magnitude_loss(pred_log_mag: torch.Tensor, target_mag: torch.Tensor) -> torch.Tensor:
    """L1 between a predicted natural-log magnitude and log(target magnitude), both [B, T, F]."""
    return F.l1_loss(pred_log_mag.float(), torch.log(target_mag.clamp_min(LOG_EPS)))


def log_spectral_distance(pred_mag: torch.Tensor, target_mag: torch.Tensor) -> torch.Tensor:
    """Mean over frames of the RMS over bins of log10 power differences; [.., T, F] magnitudes -> scalar."""
    diff = torch.log10(pred_mag.float() ** 2 + LSD_EPS) - torch.log10(target_mag.float() ** 2 + LSD_EPS)
    return diff.pow(2).mean(dim=-1).sqrt().mean()
