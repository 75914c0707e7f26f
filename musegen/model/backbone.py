"""The backbone: a bidirectional GRU that reads a window of context frames under the conditioning
and summarises it for a head (musegen.model.heads)."""
from __future__ import annotations

import torch
from torch import nn

from musegen.model.heads import HeadInput


class BiGRUBackbone(nn.Module):
    """Normalised context [B, C, F] + mask [B, C] + conditioning [B, cond_dim] -> HeadInput.

    Conditioning enters by FiLM on the GRU input (or by per-step concatenation when
    ``fusion="concat"``) and again in the state handed to the head, so a prediction can follow
    the text even when the context is empty (a neutral start). The state is the last hidden
    states of both directions, the mask-pooled outputs, the conditioning and a has-context flag.
    """

    def __init__(self, feature_dim: int, cond_dim: int, hidden: int = 96, layers: int = 2, dropout: float = 0.1,
                 fusion: str = "film") -> None:
        super().__init__()
        if fusion not in ("film", "concat"):
            raise ValueError(f"model.backbone.fusion must be 'film' or 'concat', got {fusion!r}")
        self.fusion = fusion
        step_in = feature_dim + 1 + (cond_dim if fusion == "concat" else 0)
        self.inp = nn.Linear(step_in, hidden)
        self.film = nn.Linear(cond_dim, 2 * hidden) if fusion == "film" else None
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.state_dim = 4 * hidden + cond_dim + 1

    def forward(self, context: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor) -> HeadInput:
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
        return HeadInput(state=torch.cat([last, pooled, cond, has_context], dim=-1), context=context, mask=mask)
