"""A k-means codebook: the vocabulary that turns feature frames into tokens and back.

The centroids live in a buffer, so a fitted codebook travels in the model's state_dict and a
checkpoint loaded with ``torch.load(weights_only=True)`` restores it exactly.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

# Rows per distance block: [chunk, size] float32 distances stay around 32 MiB at 1024 centroids,
# so fitting or encoding a million frames never materialises an [N, size] matrix.
_CHUNK = 8192


class Codebook(nn.Module):
    """``size`` centroids of dimension ``dim``; ``fitted`` records whether ``fit`` has run.

    The shape is fixed at construction (not at ``fit``) so that a fresh codebook can receive a
    fitted one's state_dict. ``weights`` [dim] scale each dimension in the distance that fitting and
    encoding use (all ones: the plain Euclidean k-means); the centroids stay in the frames' own units.
    A weight above 1 makes the codebook resolve that dimension more finely, at the others' expense.
    """

    def __init__(self, size: int, dim: int, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if size < 2:
            raise ValueError(f"codebook size must be >= 2, got {size}")
        if dim < 1:
            raise ValueError(f"codebook dim must be >= 1, got {dim}")
        w = torch.ones(dim) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (dim,) or not bool((w > 0).all()):
            raise ValueError(f"codebook weights must be [{dim}] positive values, got {w.tolist()}")
        self.size, self.dim = size, dim
        self.register_buffer("centroids", torch.zeros(size, dim))
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("weights", w, persistent=False)   # a hyper-parameter, rebuilt from the config

    def fit(self, frames: torch.Tensor, iters: int, seed: int, max_samples: int | None = None) -> None:
        """k-means on ``frames`` [N, dim]: k-means++ initialisation, then ``iters`` Lloyd iterations.

        Deterministic for a seed. ``max_samples`` caps the frames used (a seeded random subset):
        the centroids of a few hundred thousand frames are as good as those of all of them, at a
        fraction of the cost. A centroid left without frames is re-seeded at the frame farthest
        from its own centroid, where the codebook is doing worst.
        """
        if frames.dim() != 2 or frames.shape[1] != self.dim:
            raise ValueError(f"frames must be [N, {self.dim}], got {list(frames.shape)}")
        if iters < 1:
            raise ValueError(f"k-means iters must be >= 1, got {iters}")
        g = torch.Generator().manual_seed(seed)
        w = self.weights.cpu()
        x = frames.detach().to("cpu", torch.float32) * w
        if max_samples is not None and len(x) > max_samples:
            x = x[torch.randperm(len(x), generator=g)[:max_samples]]
        if len(x) < self.size:  # tiny data: every frame its own token, the rest repeat frames
            log.warning("k-means: %d frames for %d centroids: each frame becomes a centroid and the others repeat "
                        "frames (more data, or a smaller model.head.codebook_size)", len(x), self.size)
            c = x[torch.randint(len(x), (self.size,), generator=g)]
            c[: len(x)] = x
            self.centroids.copy_((c / w).to(self.centroids))
            self.fitted.fill_(True)
            return
        c = _kmeans_pp(x, self.size, g)
        ids = torch.full((len(x),), -1, dtype=torch.long)
        updates = 0
        for _ in range(iters):
            new_ids, dist = _assign(x, c)
            if torch.equal(new_ids, ids):   # converged
                break
            ids, updates = new_ids, updates + 1
            counts = torch.bincount(ids, minlength=self.size)
            sums = torch.zeros(self.size, self.dim, dtype=torch.float64).index_add_(0, ids, x.double())
            c = (sums / counts.clamp(min=1).unsqueeze(1)).float()
            dead = (counts == 0).nonzero().squeeze(1)
            if len(dead):
                c[dead] = x[dist.topk(len(dead)).indices]
        log.info("k-means: %d centroids on %d frames, %d updates, quantisation MSE per dimension %.4f",
                 self.size, len(x), updates, _assign(x, c)[1].mean().item() / self.dim)
        self.centroids.copy_((c / w).to(self.centroids))
        self.fitted.fill_(True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> long [...]: index of the nearest centroid."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"frames must end in dim {self.dim}, got {list(x.shape)}")
        ids, _ = _assign(x.reshape(-1, self.dim).to(self.centroids) * self.weights, self.centroids * self.weights)
        return ids.view(x.shape[:-1])

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """long [...] -> [..., dim]: the centroids."""
        return self.centroids[ids]


def _assign(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row of x [N, D] and its squared distance, in row blocks."""
    c_sq = (c * c).sum(1)
    ids = torch.empty(len(x), dtype=torch.long, device=x.device)
    dist = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), _CHUNK):
        block = x[start:start + _CHUNK]
        d = torch.addmm(c_sq, block, c.T, alpha=-2.0)   # ||c||^2 - 2 x.c; ||x||^2 added after the min
        best, idx = d.min(1)
        ids[start:start + _CHUNK] = idx
        dist[start:start + _CHUNK] = (best + (block * block).sum(1)).clamp(min=0)
    return ids, dist


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on a subset of at most 64 frames per centroid (plenty for the seeding)."""
    if len(x) > 64 * k:
        x = x[torch.randperm(len(x), generator=g)[: 64 * k]]
    centroids = torch.empty(k, x.shape[1])
    centroids[0] = x[torch.randint(len(x), (1,), generator=g)]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for i in range(1, k):
        # All-zero distances (fewer distinct frames than centroids): any frame will do.
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centroids[i] = x[torch.multinomial(weights, 1, generator=g)]
        d2 = torch.minimum(d2, ((x - centroids[i]) ** 2).sum(1))
    return centroids
