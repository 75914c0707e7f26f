"""Conditioning, in one place: the text and reference-audio conditioners, the one reference
embedding, conditioning dropout in training and the classifier-free guidance combination.

Classifier-free guidance, end to end:
- training replaces the text (probability ``p_text``) and the reference (``p_ref``) by learned null
  vectors, and shortens the context to a random length, down to none (``p_context``), so one
  network learns the conditional model, the unconditional one and a start from text alone
  (``ConditioningDropout``);
- an empty or missing prompt is the null text (``Conditioner.rows``), never an embedding of "";
- generation runs the conditional and the null-text rows in one batch of 2n (``Conditioner.rows``)
  and a head combines them as ``guide(cond, uncond, g) = uncond + g * (cond - uncond)``: 0 ignores
  the text, 1 is the conditional model, larger values push further towards the text.
"""
from __future__ import annotations

import torch
from torch import nn


def reference_embedding(frames: torch.Tensor) -> torch.Tensor:
    """[T, F] raw frames -> [2F] mean and std over time (computed in float64): the pooled summary of a
    reference clip that conditions the model, in training and in generation alike."""
    x = frames.double()
    return torch.cat([x.mean(0), x.std(0, unbiased=False)]).float()


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + guidance * (cond - uncond)."""
    return unconditional + guidance * (conditional - unconditional)


class Conditioner(nn.Module):
    """Text embedding [B, text_dim] + normalised reference embedding [B, ref_dim] -> [B, 2 * cond_dim],
    with learned null vectors standing in for a dropped or absent text or reference."""

    def __init__(self, text_dim: int, ref_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.null_text = nn.Parameter(torch.zeros(text_dim))
        self.null_ref = nn.Parameter(torch.zeros(ref_dim))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, cond_dim), nn.GELU(), nn.Linear(cond_dim, cond_dim))
        self.ref_proj = nn.Sequential(nn.Linear(ref_dim, cond_dim), nn.GELU(), nn.Linear(cond_dim, cond_dim))
        self.out_dim = 2 * cond_dim

    def forward(self, text: torch.Tensor, reference: torch.Tensor,
                drop_text: torch.Tensor | None = None, drop_ref: torch.Tensor | None = None) -> torch.Tensor:
        if drop_text is not None:
            text = torch.where(drop_text[:, None], self.null_text.expand_as(text), text)
        if drop_ref is not None:
            reference = torch.where(drop_ref[:, None], self.null_ref.expand_as(reference), reference)
        return torch.cat([self.text_proj(text), self.ref_proj(reference)], dim=-1)

    def rows(self, text: torch.Tensor, reference: torch.Tensor, has_text: torch.Tensor,
             has_ref: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The conditioning of a generation batch of n items, and whether it is guided.

        ``text`` [n, text_dim] and ``reference`` [n, ref_dim] (normalised) hold each item's embeddings;
        where ``has_text`` / ``has_ref`` [n] are False the null vector stands in, whatever the row holds.
        Without any text: n rows. Otherwise 2n rows, the n conditional ones then the n null-text ones
        that guidance contrasts them with; an item without text has two equal rows, which guidance
        leaves as they are.
        """
        drop_ref = ~has_ref
        if not bool(has_text.any()):
            return self(text, reference, ~has_text, drop_ref), False
        drop_text = torch.cat([~has_text, torch.ones_like(has_text)])
        return self(text.repeat(2, 1), reference.repeat(2, 1), drop_text, drop_ref.repeat(2)), True


class ConditioningDropout:
    """Training-time dropout of the conditioning: see the module docstring."""

    def __init__(self, p_text: float, p_ref: float, p_context: float) -> None:
        for name, p in (("cond_dropout", p_text), ("ref_dropout", p_ref), ("context_dropout", p_context)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"model.{name} must be in [0, 1], got {p}")
        self.p_text, self.p_ref, self.p_context = p_text, p_ref, p_context

    def __call__(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Context mask [B, C] -> (shortened mask, drop_text [B], drop_ref [B])."""
        b = mask.shape[0]
        mask = self.shorten_context(mask)
        drop_text = torch.rand(b, device=mask.device) < self.p_text
        drop_ref = torch.rand(b, device=mask.device) < self.p_ref
        return mask, drop_text, drop_ref

    def shorten_context(self, mask: torch.Tensor) -> torch.Tensor:
        """With probability p_context keep only a random number (0..C-1) of the last frames, so the
        model learns to start from the text alone (generation from a neutral start)."""
        b, c = mask.shape
        keep = torch.randint(0, c, (b, 1), device=mask.device)
        shortened = mask & (torch.arange(c, device=mask.device)[None, :] >= c - keep)
        chosen = torch.rand(b, 1, device=mask.device) < self.p_context
        return torch.where(chosen, shortened, mask)
