"""The energy-score head: a generator g(state, noise) -> next segment, trained with the energy score.

The energy score ES(P, y) = E||X - y||^beta - 1/2 E||X - X'||^beta (beta in (0, 2)) is a strictly
proper scoring rule: its expectation is minimised only by the true conditional distribution, so a
generator trained with it keeps every mode instead of collapsing to the conditional mean as MSE
does, and a sample costs one forward pass (Shao et al., "Continuous Visual Autoregressive
Generation via Score Maximization", ICML 2025). It is estimated without bias from ``samples`` >= 2
draws per window.

How the frames of a segment join is the hard part: a segment whose frames are drawn independently
flickers. Two decoders are offered (``decoder``):
- ``gru``: the frames are emitted one at a time by a unidirectional GRU cell that is fed back each
  sampled frame (starting from the last context frame) and a fresh noise vector per frame, so every
  frame is drawn given the ones before it, in training (free-running, no teacher forcing) and in
  generation alike;
- ``mlp``: the whole segment is drawn at once from one noise vector.
The score of a whole segment is a norm over all its K * out_dim values, in which the frame-to-frame
changes that make flicker are a small part; ``diff_weight`` adds the energy score of the frame
differences (the first one taken from the last context frame, so the join between segments counts).
A sum of proper scores is proper, so this weights the temporal structure without biasing the optimum.
"""
from __future__ import annotations

import torch
from torch import nn

from musegen.model.conditioning import guide
from musegen.model.heads import Head, HeadInput, Noise, Sampling, last_frame

DECODERS = ("gru", "mlp")
MEAN_SEED = 0  # fixed noise for ``mean``: the validation metric then moves with the weights only


def energy_score(samples: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Unbiased energy score per window, [B]: ``samples`` [m, B, ...] (m >= 2 draws), ``target`` [B, ...].

    mean_i ||x_i - y||^beta - 1 / (2 m (m - 1)) sum_{i != j} ||x_i - x_j||^beta, norms over all
    trailing dimensions. Lower is better.
    """
    m = samples.shape[0]
    if m < 2:
        raise ValueError(f"energy_score needs at least 2 samples per target, got {m}")
    x = samples.flatten(2)                                     # [m, B, D]
    fit = (x - target.flatten(1)).norm(dim=-1).pow(beta).mean(0)
    diff = x.unsqueeze(0) - x.unsqueeze(1)                     # [m, m, B, D]; the diagonal is 0
    # the norm has no gradient at 0 (nor has pow(beta < 1)): drop the zero diagonal before taking norms
    off = ~torch.eye(m, dtype=torch.bool, device=x.device)
    spread = diff[off].norm(dim=-1).pow(beta).sum(0) / (2 * m * (m - 1))
    return fit - spread


def frame_steps(segment: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """[..., K, D] segment -> its K frame-to-frame changes, the first from ``previous`` [B, D] (broadcast)."""
    return torch.diff(segment, dim=-2, prepend=previous.unsqueeze(-2).expand(*segment.shape[:-2], 1, -1))


class EnergyHead(Head):
    """A sampling head trained with the energy score: see the module docstring.

    The generator is conditioned on the state and on the last ``skip_frames`` context frames (the
    mean reversion MSEHead's skip path finds), and its output is a residual on the last real context
    frame. ``mean`` averages ``mean_samples`` draws under a fixed seed; ``sample`` scales the noise by
    the temperature (0: noise 0, deterministic) and under guidance gives rows i and n + i the same
    noise and combines their frames with ``guide`` (for ``gru``, frame by frame, feeding the guided
    frame back to both rows).
    """

    def __init__(self, state_dim: int, feature_dim: int, out_dim: int, segment_frames: int, context_frames: int,
                 n_mfcc: int, decoder: str = "gru", hidden: int = 128, noise_dim: int = 16, samples: int = 4,
                 beta: float = 1.0, diff_weight: float = 0.0, mean_samples: int = 8, skip_frames: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__(state_dim, feature_dim, out_dim, segment_frames, context_frames, n_mfcc)
        if decoder not in DECODERS:
            raise ValueError(f"model.head.decoder must be one of {DECODERS}, got {decoder!r}")
        for key, value, low in (("hidden", hidden, 1), ("noise_dim", noise_dim, 1), ("samples", samples, 2),
                                ("mean_samples", mean_samples, 1), ("skip_frames", skip_frames, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"model.head.{key} must be an integer >= {low}, got {value}")
        if skip_frames > context_frames:
            raise ValueError(f"model.head.skip_frames ({skip_frames}) must be <= "
                             f"model.context_frames ({context_frames})")
        if not 0.0 < beta < 2.0:
            raise ValueError(f"model.head.beta must be in (0, 2) for the energy score to be strictly proper, "
                             f"got {beta}")
        if diff_weight < 0.0:
            raise ValueError(f"model.head.diff_weight must be >= 0, got {diff_weight}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.head.dropout must be in [0, 1), got {dropout}")
        if out_dim > feature_dim:
            raise ValueError(f"out_dim ({out_dim}) must be <= feature_dim ({feature_dim}): frames are residuals on "
                             "the last context frame")
        self.decoder, self.hidden, self.noise_dim = decoder, hidden, noise_dim
        self.samples, self.beta, self.diff_weight = samples, beta, diff_weight
        self.mean_samples, self.skip_frames = mean_samples, skip_frames
        self.cond = nn.Sequential(nn.Linear(state_dim + skip_frames * (feature_dim + 1), hidden), nn.GELU(),
                                  nn.Dropout(dropout))
        if decoder == "gru":
            # the noise enters by a shift of the hidden state, projected for all frames at once: one
            # matrix product per segment instead of a concatenation per frame keeps the rollout fast
            self.init = nn.Linear(hidden, hidden)
            self.noise_in = nn.Linear(noise_dim, hidden)
            self.cell = nn.GRUCell(out_dim, hidden)
            self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        else:
            self.net = nn.Sequential(nn.Linear(hidden + noise_dim, 2 * hidden), nn.GELU(),
                                     nn.Linear(2 * hidden, 2 * hidden), nn.GELU(),
                                     nn.Linear(2 * hidden, segment_frames * out_dim))

    # -- the generator -------------------------------------------------------------------------

    def noise_shape(self, n: int) -> tuple[int, ...]:
        """Noise per sample: one vector per frame (``gru``) or per segment (``mlp``)."""
        return (n, self.segment_frames, self.noise_dim) if self.decoder == "gru" else (n, self.noise_dim)

    def _condition(self, x: HeadInput) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditioning [B, hidden], last real context frame [B, out_dim])."""
        inputs = [x.state]
        if self.skip_frames:
            m = x.mask.unsqueeze(-1).to(x.context.dtype)
            inputs.append(torch.cat([x.context * m, m], dim=-1)[:, -self.skip_frames:].flatten(1))
        return self.cond(torch.cat(inputs, dim=-1)), last_frame(x.context, x.mask)[:, : self.out_dim]

    def _generate(self, c: torch.Tensor, start: torch.Tensor, noise: torch.Tensor,
                  guidance: float | None = None) -> torch.Tensor:
        """Conditioning [R, hidden], start frame [R, out_dim], noise [R, ...] -> segments [R, K, out_dim],
        or under ``guidance`` (R = 2n rows, the noise of row i equal to that of n + i) the guided [n, K, out_dim]."""
        if self.decoder == "mlp":
            delta = self.net(torch.cat([c, noise], dim=-1)).view(-1, self.segment_frames, self.out_dim)
            seg = start.unsqueeze(1) + delta
            if guidance is None:
                return seg
            n = seg.shape[0] // 2
            return guide(seg[:n], seg[n:], guidance)
        h, prev, frames = torch.tanh(self.init(c)), start, []
        mix = None
        if guidance is not None:
            # guide every frame and hand the guided frame to both rows in one matrix product per frame
            # (rows i and n + i share the previous frame, so guiding the steps guides the frames)
            eye = torch.eye(prev.shape[0], device=prev.device, dtype=prev.dtype)
            half = prev.shape[0] // 2
            mix = guide(eye[:half], eye[half:], guidance).repeat(2, 1)
        for shift in self.noise_in(noise).unbind(1):
            h = self.cell(prev, h + shift)
            step = self.out(h)
            prev = prev + (step if mix is None else mix @ step)
            frames.append(prev)
        segment = torch.stack(frames, dim=1)
        return segment if mix is None else segment[: segment.shape[0] // 2]

    # -- the Head interface --------------------------------------------------------------------

    def loss(self, x: HeadInput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        c, start = self._condition(x)
        b, m = c.shape[0], self.samples
        noise = torch.randn((m,) + self.noise_shape(b), device=c.device, dtype=c.dtype).flatten(0, 1)
        draws = self._generate(c.repeat(m, 1), start.repeat(m, 1), noise).view(m, b, self.segment_frames, self.out_dim)
        es = energy_score(draws, target, self.beta).mean()
        es_steps = energy_score(frame_steps(draws, start), frame_steps(target, start), self.beta).mean()
        return {"loss": es + self.diff_weight * es_steps,
                "energy_score": es, "energy_score_steps": es_steps}

    def mean(self, x: HeadInput) -> torch.Tensor:
        c, start = self._condition(x)
        b, m = c.shape[0], self.mean_samples
        gen = torch.Generator(device=c.device).manual_seed(MEAN_SEED)
        noise = torch.randn((m,) + self.noise_shape(b), generator=gen, device=c.device, dtype=c.dtype).flatten(0, 1)
        draws = self._generate(c.repeat(m, 1), start.repeat(m, 1), noise)
        return draws.view(m, b, self.segment_frames, self.out_dim).mean(0)

    def sample(self, x: HeadInput, sampling: Sampling, noise: Noise) -> torch.Tensor:
        c, start = self._condition(x)
        draws = sampling.temperature * noise.randn(*self.noise_shape(1)[1:]).to(c)
        if sampling.guidance is not None:
            draws = draws.repeat(2, *([1] * (draws.dim() - 1)))
        return self._generate(c, start, draws, sampling.guidance)
