"""The network: a bidirectional GRU over a context window of feature frames that predicts the
next segment of frames, conditioned on a text embedding and a pooled reference-audio embedding.

Plain nn.Module (no Lightning) so generation can rebuild it from a checkpoint's tensors alone.
"""
from __future__ import annotations

import torch
from torch import nn


class MuseNet(nn.Module):
    """Context [B, C, F] (normalised) + mask + text [B, D] + reference [B, R] -> next frames [B, K, O].

    Conditioning enters twice: by FiLM on the GRU input (or by per-step concatenation when
    `fusion="concat"`) and again at the output head, so the prediction can follow the text even
    when the context is empty (a neutral start). The prediction is a residual on the last real
    context frame, which makes "repeat the last frame" the zero-effort baseline the model improves on.
    Learned null vectors stand in for a dropped text or reference: classifier-free guidance
    contrasts the two.
    """

    def __init__(
        self,
        feature_dim: int = 32,
        out_dim: int = 32,
        text_dim: int = 384,
        ref_dim: int = 64,
        segment_frames: int = 16,
        hidden: int = 96,
        layers: int = 2,
        dropout: float = 0.1,
        cond_dim: int = 64,
        fusion: str = "film",
        skip_frames: int = 4,
    ) -> None:
        super().__init__()
        if fusion not in ("film", "concat"):
            raise ValueError(f"model.net.fusion must be 'film' or 'concat', got {fusion!r}")
        self.fusion, self.segment_frames, self.out_dim = fusion, segment_frames, out_dim
        self.null_text = nn.Parameter(torch.zeros(text_dim))
        self.null_ref = nn.Parameter(torch.zeros(ref_dim))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, cond_dim), nn.GELU(), nn.Linear(cond_dim, cond_dim))
        self.ref_proj = nn.Sequential(nn.Linear(ref_dim, cond_dim), nn.GELU(), nn.Linear(cond_dim, cond_dim))
        step_in = feature_dim + 1 + (2 * cond_dim if fusion == "concat" else 0)
        self.inp = nn.Linear(step_in, hidden)
        self.film = nn.Linear(2 * cond_dim, 2 * hidden) if fusion == "film" else None
        self.gru = nn.GRU(
            hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        # a linear path from the last few frames: the mean reversion a ridge regression finds, which the
        # recurrent path then only has to correct
        self.skip_frames = skip_frames
        self.skip = nn.Linear(skip_frames * (feature_dim + 1), segment_frames * out_dim) if skip_frames else None
        head_in = 4 * hidden + 2 * cond_dim + 1
        self.head = nn.Sequential(
            nn.Linear(head_in, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(2 * hidden, segment_frames * out_dim),
        )

    def conditioning(
        self, text: torch.Tensor, reference: torch.Tensor,
        drop_text: torch.Tensor | None = None, drop_ref: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Project text and reference to one conditioning vector, with the null vectors where dropped."""
        if drop_text is not None:
            text = torch.where(drop_text[:, None], self.null_text.expand_as(text), text)
        if drop_ref is not None:
            reference = torch.where(drop_ref[:, None], self.null_ref.expand_as(reference), reference)
        return torch.cat([self.text_proj(text), self.ref_proj(reference)], dim=-1)

    def forward(self, context: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """context [B, C, F], mask [B, C] bool, cond [B, 2*cond_dim] -> [B, K, out_dim]."""
        m = mask.unsqueeze(-1).to(context.dtype)
        steps = [context * m, m]
        if self.fusion == "concat":
            steps.append(cond.unsqueeze(1).expand(-1, context.shape[1], -1))
        x = self.inp(torch.cat(steps, dim=-1))
        if self.film is not None:
            gamma, beta = self.film(cond).unsqueeze(1).chunk(2, dim=-1)
            x = x * (1 + gamma) + beta
        out, h_n = self.gru(torch.relu(x))
        count = m.sum(1)
        pooled = (out * m).sum(1) / count.clamp(min=1)
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1)
        has_context = (count > 0).to(context.dtype)
        delta = self.head(torch.cat([last, pooled, cond, has_context], dim=-1))
        if self.skip is not None:
            recent = torch.cat([context * m, m], dim=-1)[:, -self.skip_frames:]
            delta = delta + self.skip(recent.flatten(1))
        delta = delta.view(-1, self.segment_frames, self.out_dim)
        return last_frame(context, mask)[:, None, : self.out_dim] + delta


def last_frame(context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real frame of each context window (zeros, i.e. the mean, when the context is empty)."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last_idx = torch.where(mask, idx, torch.full_like(idx, -1)).max(dim=1).values
    frames = context[torch.arange(context.shape[0], device=context.device), last_idx.clamp(min=0)]
    return frames * (last_idx >= 0).unsqueeze(-1).to(context.dtype)
