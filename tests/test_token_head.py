"""The k-means codebook and the token language-model head."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from musegen.model.codebook import Codebook
from musegen.model.heads import HeadInput, Noise, Sampling
from musegen.model.muse import build_head
from musegen.model.token_head import TokenHead

STATE, FEATURES, K, C = 24, 6, 5, 8
CONFIG = Path(__file__).resolve().parents[1] / "conf" / "model" / "head" / "tokens.yaml"


def clustered(n_per: int, centres: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n_per)
    return centres[labels] + noise * torch.randn(len(labels), centres.shape[1], generator=g), labels


def make_head(out_dim: int = FEATURES, vocab: int = 16, seed: int = 0, **kwargs) -> TokenHead:
    torch.manual_seed(seed)
    head = TokenHead(state_dim=STATE, feature_dim=FEATURES, out_dim=out_dim, segment_frames=K, context_frames=C,
                     n_mfcc=4, codebook_size=vocab, kmeans_iters=10, kmeans_samples=vocab, hidden=32, embed=16,
                     dropout=0.0, **kwargs)
    head.prepare([torch.randn(400, FEATURES, generator=torch.Generator().manual_seed(1))])
    return head.eval()


GROUP_K = 6   # a segment of three pairs


def pair_head(**kwargs) -> TokenHead:
    torch.manual_seed(0)
    head = TokenHead(state_dim=STATE, feature_dim=FEATURES, out_dim=FEATURES, segment_frames=GROUP_K,
                     context_frames=C, n_mfcc=4, codebook_size=16, kmeans_iters=10, kmeans_samples=16, hidden=32,
                     embed=16, dropout=0.0, frames_per_token=2, **kwargs)
    head.prepare([torch.randn(401, FEATURES, generator=torch.Generator().manual_seed(1))])
    return head.eval()


def head_input(rows: int, seed: int = 0, context: int = C) -> HeadInput:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, C, dtype=torch.bool)
    mask[:, C - context:] = True
    return HeadInput(state=3 * torch.randn(rows, STATE, generator=g),
                     context=torch.randn(rows, C, FEATURES, generator=g), mask=mask)


def guided_input(cond: HeadInput, uncond: HeadInput) -> HeadInput:
    return HeadInput(*(torch.cat([a, b]) for a, b in zip((cond.state, cond.context, cond.mask),
                                                          (uncond.state, uncond.context, uncond.mask))))


def draw(head: TokenHead, x: HeadInput, sampling: Sampling, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        n = x.state.shape[0] // (1 if sampling.guidance is None else 2)
        return head.sample(x, sampling, Noise(range(seed, seed + n)))


# --- codebook ---------------------------------------------------------------------------------

def test_codebook_recovers_clusters() -> None:
    centres = 10 * torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    x, labels = clustered(200, centres, noise=0.1, seed=0)
    cb = Codebook(8, 4)
    cb.fit(x, iters=20, seed=0)
    assert bool(cb.fitted)
    assert torch.cdist(centres, cb.centroids).min(1).values.max() < 0.1
    ids = cb.encode(x)
    # each cluster maps to one token, and different clusters to different tokens
    per_cluster = ids.view(8, 200)
    assert (per_cluster == per_cluster[:, :1]).all()
    assert per_cluster[:, 0].unique().numel() == 8


def test_encode_is_nearest_centroid_and_decode_inverts_it() -> None:
    x = torch.randn(10_000, 5, generator=torch.Generator().manual_seed(0))   # more than one distance block
    cb = Codebook(32, 5)
    cb.fit(x, iters=5, seed=0)
    ids = cb.encode(x.view(100, 100, 5))
    assert ids.shape == (100, 100) and ids.dtype == torch.long
    assert torch.equal(ids.flatten(), torch.cdist(x, cb.centroids).argmin(1))
    assert torch.equal(cb.decode(ids), cb.centroids[ids])
    assert torch.equal(cb.encode(cb.decode(torch.arange(32))), torch.arange(32))


def test_codebook_fit_is_deterministic_for_a_seed() -> None:
    x = torch.randn(3000, 3, generator=torch.Generator().manual_seed(0))
    fits = []
    for seed in (5, 5, 6):
        cb = Codebook(16, 3)
        cb.fit(x, iters=10, seed=seed, max_samples=2000)
        fits.append(cb.centroids.clone())
    assert torch.equal(fits[0], fits[1])
    assert not torch.equal(fits[0], fits[2])


def test_codebook_with_fewer_distinct_frames_than_centroids_still_codes_them_exactly() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]]).repeat(20, 1)
    cb = Codebook(8, 2)
    cb.fit(x, iters=5, seed=0)
    assert torch.equal(cb.decode(cb.encode(x)), x)


def test_codebook_rejects_bad_input() -> None:
    cb = Codebook(8, 3)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        cb.fit(torch.randn(100, 4), iters=5, seed=0)
    with pytest.raises(ValueError, match="iters"):
        cb.fit(torch.randn(100, 3), iters=0, seed=0)


def test_codebook_on_fewer_frames_than_centroids_keeps_every_frame() -> None:
    """Tiny data (a smoke run, a handful of short files) still gives a working codebook: every frame
    is a centroid, so each frame encodes to itself."""
    cb = Codebook(8, 3)
    x = torch.randn(5, 3)
    cb.fit(x, iters=5, seed=0)
    assert bool(cb.fitted) and torch.equal(cb.decode(cb.encode(x)), x)


def test_a_weighted_dimension_is_resolved_more_finely_and_centroids_stay_in_frame_units() -> None:
    """Rare extreme values of one dimension (the loud frames of attacks in MFCC 0) are averaged with
    common ones by a plain k-means; weighting that dimension gives them centroids of their own."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 4, generator=g)
    x[:200, 0] = 4.0 + 0.1 * torch.randn(200, generator=g)   # 5% of frames much louder
    errors = {}
    for w in (1.0, 6.0):
        cb = Codebook(6, 4, torch.tensor([w, 1.0, 1.0, 1.0]))
        cb.fit(x, iters=25, seed=0)
        q = cb.decode(cb.encode(x))
        errors[w] = float(((q - x)[:200, 0] ** 2).mean())
        # encode is the nearest centroid under the weighted distance, decode gives frame units
        w_vec = torch.tensor([w, 1.0, 1.0, 1.0])
        assert torch.equal(cb.encode(x), torch.cdist(x * w_vec, cb.centroids * w_vec).argmin(1))
        assert cb.centroids[:, 0].max() < 4.5
    assert errors[6.0] < 0.25 * errors[1.0]


def test_codebook_weights_are_not_in_the_state_dict_and_are_checked() -> None:
    """Weights are a hyper-parameter: a checkpoint's tensors load into a codebook built from its config,
    and a codebook saved before weights existed loads into one with the plain distance."""
    cb = Codebook(8, 3, torch.tensor([2.0, 1.0, 1.0]))
    assert set(cb.state_dict()) == {"centroids", "fitted"}
    for bad in (torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])):
        with pytest.raises(ValueError, match="codebook weights must be"):
            Codebook(8, 3, bad)


def test_energy_weight_weighs_mfcc0_of_every_frame_of_a_token() -> None:
    head = pair_head(energy_weight=3.0)
    assert head.codebook.weights.view(2, FEATURES)[:, 0].tolist() == [3.0, 3.0]
    assert float(head.codebook.weights.view(2, FEATURES)[:, 1:].sum()) == 2 * (FEATURES - 1)
    assert torch.equal(make_head().codebook.weights, torch.ones(FEATURES))   # the default: plain k-means
    with pytest.raises(ValueError, match="energy_weight"):
        make_head(energy_weight=0.0)


# --- head -------------------------------------------------------------------------------------

def test_config_builds_a_head_and_its_sampling_defaults() -> None:
    config = OmegaConf.to_container(OmegaConf.load(CONFIG))
    sampling = Sampling(**config.pop("sampling"))
    head = build_head(config, state_dim=STATE, feature_dim=32, out_dim=32, segment_frames=16, context_frames=32,
                      n_mfcc=20)
    assert isinstance(head, TokenHead) and head.codebook.centroids.shape == (head.vocab, 32)
    assert sampling.top_k is not None and sampling.top_k < head.vocab


@pytest.mark.parametrize(("key", "value"), [("codebook_size", 1), ("kmeans_iters", 0), ("hidden", 0),
                                            ("dropout", 1.0), ("label_smoothing", -0.1), ("kmeans_samples", 8),
                                            ("frames_per_token", 0), ("frames_per_token", 2),   # K = 5
                                            ("energy_weight", 0.0), ("loudness_levels", 1), ("loudness_levels", -2)])
def test_bad_config_names_the_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"model.head.{key}"):
        TokenHead(STATE, FEATURES, FEATURES, K, C, 4, **{"codebook_size": 16, "kmeans_samples": 16, key: value})


def test_unfitted_head_refuses_to_train_or_sample() -> None:
    head = TokenHead(STATE, FEATURES, FEATURES, K, C, 4, codebook_size=16, kmeans_samples=16)
    with pytest.raises(RuntimeError, match="prepare"):
        head.loss(head_input(2), torch.randn(2, K, FEATURES))
    with pytest.raises(RuntimeError, match="prepare"):
        draw(head, head_input(2), Sampling(None, 1.0))


def test_prepare_keeps_a_fitted_codebook() -> None:
    head = make_head()
    before = head.codebook.centroids.clone()
    head.prepare([torch.randn(400, FEATURES) + 5])
    assert torch.equal(head.codebook.centroids, before)


def overfit(head: TokenHead, x: HeadInput, target: torch.Tensor, steps: int) -> tuple[dict, dict]:
    """The head's losses on one batch before and after `steps` Adam steps on it."""
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = head.loss(x, target)
    for _ in range(steps):
        opt.zero_grad()
        out = head.loss(x, target)
        out["loss"].backward()
        opt.step()
    return first, out


def test_head_overfits_a_tiny_batch() -> None:
    head = make_head(vocab=32).train()
    target = head.codebook.decode(torch.randint(32, (4, K), generator=torch.Generator().manual_seed(2)))
    first, out = overfit(head, head_input(4), target, 50)
    assert first["loss"] > 0.8 * math.log(32)
    assert out["loss"] < 0.1 * math.log(32)
    assert torch.allclose(out["bits_per_frame"], out["loss"].detach() / math.log(2))


def test_label_smoothing_leaves_bits_per_frame_unsmoothed() -> None:
    plain, smooth = make_head(), make_head(label_smoothing=0.2)
    x, target = head_input(3), torch.randn(3, K, FEATURES)
    a, b = plain.loss(x, target), smooth.loss(x, target)
    assert torch.allclose(a["bits_per_frame"], b["bits_per_frame"])
    assert not torch.allclose(a["loss"], b["loss"])


@pytest.mark.parametrize("make", [make_head, pair_head])
def test_mean_is_an_expected_centroid_and_the_rollout_matches_teacher_forcing(make) -> None:
    head = make()
    x = head_input(3)
    greedy = draw(head, x, Sampling(None, 0.0))
    with torch.no_grad():
        rolled, forced = head.mean(x), head.mean(x, target=greedy)
    assert rolled.shape == (3, head.segment_frames, FEATURES)
    # the written-out rollout cell and the teacher-forced nn.GRU are the same network
    assert torch.allclose(rolled, forced, atol=1e-5)
    frames = head.codebook.centroids.reshape(-1, FEATURES)
    lo, hi = frames.min(0).values, frames.max(0).values
    assert ((rolled >= lo - 1e-5) & (rolled <= hi + 1e-5)).all()


@pytest.mark.parametrize("guidance", [None, 3.0])
def test_sample_shapes_and_values_are_centroids(guidance: float | None) -> None:
    head = make_head()
    x = head_input(3) if guidance is None else guided_input(head_input(3, seed=0), head_input(3, seed=1))
    out = draw(head, x, Sampling(guidance, 1.0, top_k=8, top_p=0.9))
    assert out.shape == (3, K, FEATURES)
    assert torch.equal(head.codebook.decode(head.codebook.encode(out)), out)


def test_guidance_zero_is_the_unconditional_model_and_one_the_conditional() -> None:
    head = make_head()
    cond, uncond = head_input(4, seed=0), head_input(4, seed=1)
    uncond.context, uncond.mask = cond.context, cond.mask   # the two rows of an item share their context
    both = guided_input(cond, uncond)
    greedy = Sampling(None, 0.0)
    only_cond, only_uncond = draw(head, cond, greedy), draw(head, uncond, greedy)
    assert not torch.equal(only_cond, only_uncond)
    assert torch.equal(draw(head, both, Sampling(1.0, 0.0)), only_cond)
    assert torch.equal(draw(head, both, Sampling(0.0, 0.0)), only_uncond)
    # guidance 0 draws from exactly the unconditional distribution: the same seed gives the same tokens
    assert torch.equal(draw(head, both, Sampling(0.0, 1.0), seed=4), draw(head, uncond, Sampling(None, 1.0), seed=4))


def test_top_k_one_and_a_tiny_nucleus_are_argmax() -> None:
    head = make_head()
    x = head_input(3)
    greedy = draw(head, x, Sampling(None, 0.0))
    assert torch.equal(draw(head, x, Sampling(None, 1.5, top_k=1)), greedy)
    assert torch.equal(draw(head, x, Sampling(None, 1.5, top_p=1e-6)), greedy)


def test_truncation_draws_only_from_the_kept_tokens() -> None:
    head = make_head()
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, -1)
    g = Noise(range(4000))
    nucleus = head.next_token(logits, Sampling(None, 1.0, top_p=0.7), g)
    assert set(nucleus.tolist()) == {0, 1}
    top3 = head.next_token(logits, Sampling(None, 1.0, top_k=3), g)
    assert set(top3.tolist()) == {0, 1, 2}
    full = head.next_token(logits, Sampling(None, 1.0), g)
    assert abs((full == 3).float().mean().item() - 0.05) < 0.02
    # top-p after top-k is taken on the renormalised top k: 0.5 / 0.95 < 0.55 keeps two tokens
    assert set(head.next_token(logits, Sampling(None, 1.0, top_k=3, top_p=0.55), g).tolist()) == {0, 1}


def test_min_p_keeps_the_tokens_near_the_favourite() -> None:
    head = make_head()
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, -1)
    g = Noise(range(4000))
    # 0.15 / 0.5 = 0.3 >= 0.25 stays, 0.05 / 0.5 = 0.1 goes; the kept tokens keep their proportions
    kept = head.next_token(logits, Sampling(None, 1.0, min_p=0.25), g)
    assert set(kept.tolist()) == {0, 1, 2}
    assert abs((kept == 0).float().mean().item() - 0.5 / 0.95) < 0.03
    assert torch.equal(head.next_token(logits, Sampling(None, 1.0, min_p=0.0), Noise(range(4000))),
                       head.next_token(logits, Sampling(None, 1.0), Noise(range(4000))))


def test_min_p_under_guidance_is_set_by_the_conditional_model() -> None:
    """Guidance 3 turns a token that is rare without the text and unlikely with it (0.01 against
    0.001) into the likeliest; min_p, read off the conditional distribution, never lets it be drawn."""
    head = make_head()
    n = 4000
    cond = torch.tensor([[0.59, 0.4, 0.01]]).log().expand(n, -1)
    uncond = torch.tensor([[0.6, 0.399, 0.001]]).log().expand(n, -1)
    logits = torch.cat([cond, uncond])
    g = Noise(range(n))
    guided = head.next_token(logits, Sampling(3.0, 1.0), g)[:n]
    assert (guided == 2).float().mean() > 0.4
    floored = head.next_token(logits, Sampling(3.0, 1.0, min_p=0.05), g)
    assert set(floored[:n].tolist()) == {0, 1} and torch.equal(floored[:n], floored[n:])


def test_quantised_context_reads_centroids() -> None:
    head = make_head(quantised_context=True)
    x = head_input(2).context
    read = head.read_context(x)
    assert torch.equal(read, head.codebook.decode(head.codebook.encode(x)))
    assert torch.equal(head.read_context(read), read)
    assert torch.equal(make_head().read_context(x), x)   # off (the default of checkpoints without the key)


def test_temperature_sharpens_the_distribution() -> None:
    head = make_head()
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, -1)
    g = Noise(range(4000))
    cold = (head.next_token(logits, Sampling(None, 0.3), g) == 0).float().mean()
    hot = (head.next_token(logits, Sampling(None, 3.0), g) == 0).float().mean()
    assert cold > 0.8 and hot < 0.4


def test_same_seed_same_samples() -> None:
    head = make_head()
    x = guided_input(head_input(2, seed=0), head_input(2, seed=1))
    s = Sampling(2.0, 1.0, top_p=0.95)
    assert torch.equal(draw(head, x, s, seed=7), draw(head, x, s, seed=7))
    assert not torch.equal(draw(head, x, s, seed=7), draw(head, x, s, seed=8))


def test_empty_context_starts_from_the_start_token() -> None:
    head = make_head()
    empty = head_input(3, context=0)
    other = HeadInput(empty.state, torch.randn_like(empty.context), empty.mask)
    s = Sampling(None, 1.0)
    assert torch.equal(draw(head, empty, s), draw(head, other, s))   # padding is never read
    assert draw(head, empty, s).shape == (3, K, FEATURES)


def test_state_dict_round_trip_gives_identical_samples() -> None:
    head = make_head()
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    fresh = TokenHead(state_dim=STATE, feature_dim=FEATURES, out_dim=FEATURES, segment_frames=K, context_frames=C,
                      n_mfcc=4, codebook_size=16, kmeans_samples=16, hidden=32, embed=16, dropout=0.0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    assert bool(fresh.codebook.fitted)
    x = guided_input(head_input(2, seed=0), head_input(2, seed=1))
    s = Sampling(3.0, 1.0, top_k=10)
    assert torch.equal(draw(fresh, x, s), draw(head, x, s))


def test_without_chroma_only_the_predicted_dimensions_are_tokens() -> None:
    head = make_head(out_dim=4)
    assert head.codebook.centroids.shape == (16, 4)
    x = head_input(2)
    assert draw(head, x, Sampling(None, 1.0)).shape == (2, K, 4)
    assert head.loss(x, torch.randn(2, K, 4))["loss"].isfinite()
    # the step-0 token comes from the predicted dimensions of the last context frame only
    other = HeadInput(x.state, torch.cat([x.context[..., :4], torch.randn(2, C, FEATURES - 4)], dim=-1), x.mask)
    assert torch.equal(draw(head, other, Sampling(None, 1.0)), draw(head, x, Sampling(None, 1.0)))


# --- tokens of several frames -------------------------------------------------------------------

def test_a_token_stands_for_consecutive_frames() -> None:
    head = pair_head()
    assert head.codebook.centroids.shape == (16, 2 * FEATURES)
    x = guided_input(head_input(3, seed=0), head_input(3, seed=1))
    out = draw(head, x, Sampling(3.0, 1.0, top_k=8))
    assert out.shape == (3, GROUP_K, FEATURES)
    pairs = out.reshape(3, GROUP_K // 2, 2 * FEATURES)
    assert torch.equal(head.codebook.decode(head.codebook.encode(pairs)), pairs)
    plain = head_input(3)
    losses = head.loss(plain, draw(head, plain, Sampling(None, 0.0)))
    assert torch.allclose(losses["bits_per_frame"], losses["loss"].detach() / (2 * math.log(2)))


def test_a_context_shorter_than_a_token_starts_from_the_start_token() -> None:
    head = pair_head()
    s = Sampling(None, 1.0)
    one, empty = head_input(3, context=1), head_input(3, context=0)
    assert torch.equal(draw(head, one, s), draw(head, empty, s))
    two = head_input(3, context=2)
    moved = HeadInput(two.state, two.context.clone(), two.mask)
    moved.context[:, -2:] += 3.0
    assert not torch.equal(draw(head, two, s), draw(head, moved, s))   # a whole pair is read


def test_quantised_context_reads_pairs_of_centroids() -> None:
    head = pair_head(quantised_context=True)
    x = head_input(2).context
    read = head.read_context(x)
    pairs = x.reshape(2, C // 2, 2 * FEATURES)
    assert torch.equal(read, head.codebook.decode(head.codebook.encode(pairs)).reshape(2, C, FEATURES))
    assert torch.equal(head.read_context(read), read)


def test_the_codebook_learns_groups_inside_clips_only() -> None:
    """Clips of odd length are grouped from their end: no token mixes the end of one clip with the
    start of the next."""
    head = TokenHead(STATE, FEATURES, FEATURES, GROUP_K, C, 4, codebook_size=2, kmeans_samples=8,
                     frames_per_token=2)
    a, b = torch.zeros(5, FEATURES), torch.ones(5, FEATURES)
    head.prepare([a, b, a, b])
    centroids = sorted(head.codebook.centroids.tolist())
    assert centroids == [[0.0] * 2 * FEATURES, [1.0] * 2 * FEATURES]



def _class_logits(head: TokenHead, class_probs: list[float], rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [rows, V] whose pitch classes have ``class_probs`` and whose tokens within a class
    have probabilities 1, 2, 3, ... in proportion; with the classes [V]."""
    classes = head.pitch_classes()
    weights = torch.zeros(head.vocab)
    for c, p in enumerate(class_probs):
        members = (classes == c).nonzero().flatten()
        if len(members):
            w = torch.arange(1, len(members) + 1, dtype=torch.float)
            weights[members] = p * w / w.sum()
    return (weights / weights.sum()).log().expand(rows, -1), classes


def test_pitch_temperature_tempers_the_class_and_keeps_the_timbre_within_it() -> None:
    head = make_head()
    classes = head.pitch_classes()
    present = sorted(set(classes.tolist()))
    assert len(present) >= 2 and classes.shape == (head.vocab,)
    probs = [0.0] * (FEATURES - 4)
    probs[present[0]], probs[present[1]] = 0.7, 0.3
    rows = 20000
    logits, classes = _class_logits(head, probs, rows)
    drawn = head.next_token(logits, Sampling(None, 1.0, pitch_temperature=0.5), Noise(range(rows)))
    first = (classes[drawn] == present[0]).float().mean().item()
    assert abs(first - 0.49 / (0.49 + 0.09)) < 0.02       # p(class) ** (1 / 0.5), renormalised
    members = (classes == present[0]).nonzero().flatten()
    if len(members) > 1:   # within the class the proportions stay those of temperature 1
        counts = torch.stack([(drawn == m).sum() for m in members]).float()
        expected = torch.arange(1, len(members) + 1, dtype=torch.float)
        assert torch.allclose(counts / counts.sum(), expected / expected.sum(), atol=0.03)
    plain = head.next_token(logits, Sampling(None, 1.0), Noise(range(rows)))
    assert abs((classes[plain] == present[0]).float().mean().item() - 0.7) < 0.02
    same = head.next_token(logits, Sampling(None, 1.0, pitch_temperature=1.0), Noise(range(rows)))
    assert (same == plain).float().mean() > 0.999   # equal temperatures: plain sampling (up to rounding)
    greedy = head.next_token(logits, Sampling(None, 1.0, pitch_temperature=0.0), Noise(range(rows)))
    assert set(classes[greedy].tolist()) == {present[0]}


def test_pitch_temperature_applies_after_guidance_and_needs_chroma() -> None:
    head = make_head()
    n = 4000
    logits, classes = _class_logits(head, [0.25] * (FEATURES - 4), n)
    drawn = head.next_token(torch.cat([logits, logits]), Sampling(3.0, 1.0, pitch_temperature=0.0), Noise(range(n)))
    assert torch.equal(drawn[:n], drawn[n:]) and len(set(classes[drawn].tolist())) == 1
    mfcc_only = make_head(out_dim=4)
    with pytest.raises(ValueError, match="pitch_temperature and min_note_frames need a model that predicts chroma"):
        mfcc_only.next_token(torch.zeros(3, mfcc_only.vocab), Sampling(None, 1.0, pitch_temperature=0.5),
                             Noise([0, 1, 2]))


def _short_changes(head: TokenHead, x: HeadInput, frames: torch.Tensor, min_frames: int) -> int:
    """Changes of pitch class in sampled ``frames`` [rows, K, out_dim] after a class that lasted fewer
    than ``min_frames`` frames, counted through the valid part of the context."""
    classes = head.pitch_classes()
    p = head.frames_per_token
    valid = x.mask.reshape(len(x.mask), -1, p).all(-1)
    context, drawn = classes[head._tokens(x.context)], classes[head._tokens(frames)]
    short = 0
    for row in range(len(drawn)):
        seq = context[row][valid[row]].tolist() + drawn[row].tolist()
        first_drawn, lasted = len(seq) - drawn.shape[1], 1
        for t in range(1, len(seq)):
            if seq[t] == seq[t - 1]:
                lasted += 1
                continue
            short += t >= first_drawn and lasted * p < min_frames
            lasted = 1
    return short


@pytest.mark.parametrize(("make", "min_frames"), [(make_head, 3), (pair_head, 4)])
@pytest.mark.parametrize("guidance", [None, 3.0])
def test_min_note_frames_holds_a_pitch_class_once_the_music_changes_to_it(make, min_frames: int,
                                                                         guidance: float | None) -> None:
    head, rows = make(), 300
    x = head_input(rows, context=C - 2)   # two padded frames: the run is counted from the valid ones
    if guidance is not None:
        x = guided_input(x, HeadInput(head_input(rows, seed=1).state, x.context, x.mask))
    free = head.sample(x, Sampling(guidance, 1.0), Noise(range(rows)))
    held = head.sample(x, Sampling(guidance, 1.0, min_note_frames=min_frames), Noise(range(rows)))
    cond = HeadInput(x.state[:rows], x.context[:rows], x.mask[:rows])
    assert _short_changes(head, cond, free, min_frames) > 10   # the decoder alone changes class quickly
    assert _short_changes(head, cond, held, min_frames) == 0
    assert head.pitch_classes()[head._tokens(held)].unique().numel() > 1   # it still changes class


def test_min_note_frames_from_an_empty_context_leaves_the_first_token_free() -> None:
    head, rows = make_head(), 200
    x = head_input(rows, context=0)
    classes = head.pitch_classes()[head._tokens(head.sample(x, Sampling(None, 1.0, min_note_frames=K + C),
                                                            Noise(range(rows))))]
    assert classes[:, 0].unique().numel() > 1
    assert torch.equal(classes, classes[:, :1].expand_as(classes))


def test_min_note_frames_gives_way_where_min_p_leaves_no_token_of_the_held_class() -> None:
    head = make_head()
    classes = head.pitch_classes()
    favourite = int(torch.arange(head.vocab)[classes != classes[0]][0])
    logits = torch.full((2, head.vocab), -5.0)
    logits[:, favourite] = 5.0
    allowed = (classes == classes[0]).expand(2, -1)
    held = head.next_token(logits, Sampling(None, 1.0), Noise([0, 1]), allowed)
    assert (classes[held] == classes[0]).all()
    alone = head.next_token(logits, Sampling(None, 1.0, min_p=0.5), Noise([0, 1]), allowed)
    assert (alone == favourite).all()


# --- loudness levels --------------------------------------------------------------------------

LOUD_HEADS = [lambda: make_head(loudness_levels=4), lambda: pair_head(loudness_levels=3)]


@pytest.mark.parametrize(("make", "ratio"), list(zip(LOUD_HEADS, (0.5, 0.95))))   # pairs: 3 levels for 2-d residuals
def test_loudness_levels_refine_mfcc0_and_leave_the_rest_to_the_token(make, ratio: float) -> None:
    head = make()
    frames = torch.randn(3, C, FEATURES, generator=torch.Generator().manual_seed(5))
    tokens = head._tokens(frames)
    levels = head._levels(frames, tokens)
    plain, refined = head._frames(head.codebook.decode(tokens)), head._decode(tokens, levels)
    assert levels.shape == tokens.shape and int(levels.max()) < head.loudness_levels
    assert torch.equal(refined[..., 1:], plain[..., 1:])
    error = {name: float(((f[..., 0] - frames[..., 0]) ** 2).mean())
             for name, f in (("plain", plain), ("refined", refined))}
    assert error["refined"] < ratio * error["plain"]


@pytest.mark.parametrize("make", LOUD_HEADS)
@pytest.mark.parametrize("guidance", [None, 3.0])
def test_loudness_levels_sample_a_token_and_its_level(make, guidance: float | None) -> None:
    head = make()
    x = head_input(3) if guidance is None else guided_input(head_input(3, seed=0), head_input(3, seed=1))
    out = draw(head, x, Sampling(guidance, 1.0, top_k=8))
    assert out.shape == (3, head.segment_frames, FEATURES)
    tokens = head._tokens(out)
    assert torch.allclose(head._decode(tokens, head._levels(out, tokens)), out, atol=1e-5)
    # the level moves MFCC 0 off the token's centroid on some frames
    assert not torch.allclose(head._frames(head.codebook.decode(tokens))[..., 0], out[..., 0])


def test_quantised_context_reads_the_tokens_without_their_levels() -> None:
    head = make_head(loudness_levels=4, quantised_context=True)
    frames = torch.randn(2, C, FEATURES, generator=torch.Generator().manual_seed(6))
    tokens = head._tokens(frames)
    assert torch.equal(head.read_context(frames), head._decode(tokens, None))
    assert not torch.equal(head.read_context(frames), head._decode(tokens, head._levels(frames, tokens)))


@pytest.mark.parametrize("make", LOUD_HEADS)
def test_loudness_levels_do_not_steer_the_tokens(make) -> None:
    """The token stream reads no level: other level weights draw other levels but the same tokens."""
    head = make()
    x = guided_input(head_input(3, seed=0), head_input(3, seed=1))
    s = Sampling(3.0, 1.0, top_k=8)
    before = draw(head, x, s)
    with torch.no_grad():
        head.level_out.weight.normal_(generator=torch.Generator().manual_seed(9))
    after = draw(head, x, s)
    assert torch.equal(head._tokens(before), head._tokens(after))
    assert not torch.equal(before[..., 0], after[..., 0])


def test_the_continuation_of_a_repeated_token_is_its_level() -> None:
    """One frame per token: the level that holds the loudness through a repeated token is the level it had
    (with pairs it is the level nearest a flat pair at the last frame's loudness)."""
    head = make_head(loudness_levels=4)
    tokens = torch.arange(head.vocab).repeat_interleave(head.loudness_levels)
    levels = torch.arange(head.loudness_levels).repeat(head.vocab)
    tables = head._loudness_tables()
    assert torch.equal(head._continuation(tokens, levels, tokens, tables), levels)
    start = torch.full_like(tokens, head.start_id)
    assert (head._continuation(start, levels, tokens, tables) == head.loudness_levels).all()


@pytest.mark.parametrize("make", LOUD_HEADS)
def test_loudness_levels_rollout_matches_teacher_forcing(make) -> None:
    """The written-out rollout cell and the teacher-forced nn.GRU give the same logits for tokens and levels.
    (A frame refined by its level may encode to another token, as a real frame of that loudness would,
    so the comparison is on the tokens and levels themselves, not on re-encoded frames.)"""
    head = make()
    x = head_input(3)
    with torch.no_grad():
        tokens, levels, logits, level_logits = head._rollout(x, lambda t: t.argmax(-1), lambda t: t.argmax(-1))
        forced, forced_levels = head._teacher_forced(x, tokens, levels)
    assert torch.allclose(logits, forced, atol=1e-5) and torch.allclose(level_logits, forced_levels, atol=1e-5)
    # a new token takes the likeliest level, a repeated one keeps the level it had
    start, start_level = head._start_tokens(x)
    prev_tokens = torch.cat([start[:, None], tokens[:, :-1]], 1)
    prev_levels = torch.cat([start_level[:, None], levels[:, :-1]], 1)
    repeated = tokens == prev_tokens
    assert repeated.any() and (~repeated).any()
    assert torch.equal(levels, torch.where(repeated, prev_levels, level_logits.argmax(-1)))


def test_loudness_levels_under_guidance_zero_and_one() -> None:
    head = make_head(loudness_levels=4)
    cond, uncond = head_input(4, seed=0), head_input(4, seed=1)
    uncond.context, uncond.mask = cond.context, cond.mask
    both = guided_input(cond, uncond)
    assert torch.equal(draw(head, both, Sampling(1.0, 0.0)), draw(head, cond, Sampling(None, 0.0)))
    assert torch.equal(draw(head, both, Sampling(0.0, 1.0), seed=4), draw(head, uncond, Sampling(None, 1.0), seed=4))


def test_loudness_levels_are_learned_with_the_tokens() -> None:
    head = make_head(vocab=32, loudness_levels=4).train()
    x = head_input(4)
    g = torch.Generator().manual_seed(2)
    tokens, levels = torch.randint(32, (4, K), generator=g), torch.randint(4, (4, K), generator=g)
    first, out = overfit(head, x, head._decode(tokens, levels), 60)
    assert first["loudness_bits_per_frame"] > 0.8 * 2 and out["loudness_bits_per_frame"] < 0.2
    # bits per frame count both choices: the token's and the level's
    assert torch.allclose(out["bits_per_frame"], out["loss"].detach() / math.log(2))
    assert out["bits_per_frame"] > out["loudness_bits_per_frame"]


def test_loudness_levels_round_trip_through_the_state_dict() -> None:
    head = make_head(loudness_levels=4)
    assert "levels.centroids" in head.state_dict() and "levels.centroids" not in make_head().state_dict()
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    fresh = TokenHead(state_dim=STATE, feature_dim=FEATURES, out_dim=FEATURES, segment_frames=K, context_frames=C,
                      n_mfcc=4, codebook_size=16, kmeans_samples=16, hidden=32, embed=16, dropout=0.0,
                      loudness_levels=4)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = guided_input(head_input(2, seed=0), head_input(2, seed=1))
    s = Sampling(3.0, 1.0, top_k=10, min_note_frames=3)
    assert torch.equal(draw(fresh.eval(), x, s), draw(head, x, s))


DECAY = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0, -0.5])   # MFCC 0 over a note of six frames


def enveloped_notes(notes: int, seed: int) -> torch.Tensor:
    """Notes of six frames, each on one of four well-apart frames, its MFCC 0 decaying by DECAY."""
    g = torch.Generator().manual_seed(seed)
    centres = 20 * torch.randn(4, FEATURES, generator=g)
    centres[:, 4:] = 20 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 1)   # pitch classes 0, 1, 0, 1
    picks = torch.arange(notes) % 4   # consecutive notes change pitch class, so each note is one run
    frames = centres[picks].repeat_interleave(len(DECAY), 0)
    frames[:, 0] += DECAY.repeat(notes)
    return frames + 0.01 * torch.randn(frames.shape, generator=g)


def envelope_head(envelope_frames: int) -> TokenHead:
    head = TokenHead(state_dim=STATE, feature_dim=FEATURES, out_dim=FEATURES, segment_frames=K, context_frames=C,
                     n_mfcc=4, codebook_size=4, kmeans_iters=10, kmeans_samples=240, hidden=32, embed=16,
                     envelope_frames=envelope_frames)
    head.prepare([enveloped_notes(40, seed=0)])
    return head.eval()


def test_the_note_envelope_is_the_frames_offset_from_their_token_by_how_long_the_note_has_lasted() -> None:
    head = envelope_head(8)
    # each token's centroid holds its note's mean loudness; the envelope holds the decay around it
    assert torch.allclose(head.envelope[: len(DECAY), 0], DECAY - DECAY.mean(), atol=0.02)
    assert torch.allclose(head.envelope[:, 1:], torch.zeros(8, FEATURES - 1), atol=0.02)
    # finishing the tokens of new notes gives back their decays
    notes = enveloped_notes(6, seed=0)
    centroids = head._decode(head._tokens(notes), None)
    empty = torch.zeros(1, C, FEATURES)
    finished = head.finish(centroids[None], empty, torch.zeros(1, C, dtype=torch.bool))[0]
    assert torch.allclose(finished, notes, atol=0.05)
    assert (finished[:, 0] - centroids[:, 0]).abs().max() > 1.9


def test_the_note_envelope_counts_on_from_the_context_and_caps_at_its_last_frame() -> None:
    head = envelope_head(4)
    token = head.codebook.centroids[:1]
    context = token.expand(C, -1)[None].clone()
    mask = torch.zeros(1, C, dtype=torch.bool)
    mask[:, -2:] = True   # two frames of the token so far, the rest padding
    finished = head.finish(token.expand(3, -1)[None], context, mask)[0]
    assert torch.allclose(finished - token, head.envelope[[2, 3, 3]], atol=1e-4)


def test_without_an_envelope_finishing_leaves_the_frames_as_sampled() -> None:
    head = make_head()
    frames = torch.randn(2, K, FEATURES)
    assert head.finish(frames, torch.randn(2, C, FEATURES), torch.ones(2, C, dtype=torch.bool)) is frames
    assert "envelope" not in head.state_dict()
    with pytest.raises(ValueError, match="envelope_frames"):
        make_head(envelope_frames=4, loudness_levels=4)
    with pytest.raises(ValueError, match="envelope_frames"):
        make_head(envelope_frames=-1)
    # MFCCs only: no pitch classes, each token run is a note
    mfcc_only = make_head(out_dim=4, envelope_frames=4)
    tokens = torch.tensor([3, 3, 5, 5, 5])
    assert torch.equal(mfcc_only._lasted(mfcc_only._notes(tokens)), torch.tensor([0, 1, 0, 1, 2]))


def test_the_note_envelope_follows_the_pitch_class_through_changes_of_token() -> None:
    """A new token of the same pitch class goes on with the note; a new class starts one."""
    head = envelope_head(8)
    classes = head.pitch_classes()
    a, b = [int(i) for i in (classes == classes[0]).nonzero().squeeze(1)[:2]]
    other = int((classes != classes[0]).nonzero()[0])
    tokens = torch.tensor([a, a, b, b, other, other, a])
    frames = head.codebook.decode(tokens)[None]
    empty, none = torch.zeros(1, C, FEATURES), torch.zeros(1, C, dtype=torch.bool)
    finished = head.finish(frames, empty, none)
    assert torch.allclose(finished - frames, head.envelope[[0, 1, 2, 3, 0, 1, 0]][None], atol=1e-4)
