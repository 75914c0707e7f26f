"""The energy-score head: the score itself, what training with it buys over MSE, and sampling."""
import io
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from musegen.model.energy_head import EnergyHead, energy_score, frame_steps
from musegen.model.heads import HeadInput, MSEHead, Noise, Sampling
from musegen.runtime import torch_threads

DIMS = dict(state_dim=6, feature_dim=5, out_dim=5, segment_frames=4, context_frames=8, n_mfcc=3)
DECODERS = ["gru", "mlp"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids the synchronisation cost of several on every op."""
    with torch_threads(1):
        yield


def make_head(decoder: str = "gru", seed: int = 0, **kw) -> EnergyHead:
    torch.manual_seed(seed)
    return EnergyHead(**DIMS, decoder=decoder, hidden=16, noise_dim=4, **kw).eval()


def make_input(b: int = 3, seed: int = 1) -> HeadInput:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, DIMS["context_frames"], dtype=torch.bool)
    mask[0, :5] = False  # a shortened context
    return HeadInput(state=torch.randn(b, DIMS["state_dim"], generator=g),
                     context=torch.randn(b, DIMS["context_frames"], DIMS["feature_dim"], generator=g), mask=mask)


def guided_input(x: HeadInput, uncond_state: torch.Tensor) -> HeadInput:
    """2n rows: x's n conditional ones, then n with another state over the same context."""
    return HeadInput(state=torch.cat([x.state, uncond_state]), context=x.context.repeat(2, 1, 1),
                     mask=x.mask.repeat(2, 1))


def draw(head: EnergyHead, x: HeadInput, guidance: float | None = None, temperature: float = 1.0,
         seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        n = x.state.shape[0] // (1 if guidance is None else 2)
        return head.sample(x, Sampling(guidance=guidance, temperature=temperature), Noise(range(seed, seed + n)))


def test_energy_score_prefers_the_true_distribution():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2000, 3, generator=g)
    target = mu + torch.randn(2000, 3, generator=g)
    true = mu + torch.randn(4, 2000, 3, generator=g)
    shifted = true + 0.5
    collapsed = mu.expand(4, -1, -1)  # the conditional mean, what MSE learns
    too_wide = mu + 2.0 * torch.randn(4, 2000, 3, generator=g)
    es_true = energy_score(true, target).mean()
    assert es_true < energy_score(shifted, target).mean()
    assert es_true < energy_score(collapsed, target).mean()
    assert es_true < energy_score(too_wide, target).mean()


def test_energy_score_matches_its_definition():
    # samples 0 and 2 around a target 1: mean distance 1, minus 1 / (2 * 2 * 1) * (2 + 2) = 1
    assert energy_score(torch.tensor([[[0.0]], [[2.0]]]), torch.tensor([[1.0]])).item() == pytest.approx(0.0)
    # beta = 0.5 on a 2-D case, against the formula written out
    x, y = torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]], [[0.0, 1.0]]]), torch.zeros(1, 2)
    fit = (5.0 ** 0.5 + 0.0 + 1.0) / 3
    spread = 2 * (5.0 ** 0.5 + (9.0 + 9.0) ** 0.25 + 1.0) / (2 * 3 * 2)
    assert energy_score(x, y, beta=0.5).item() == pytest.approx(fit - spread)


def test_frame_steps_start_from_the_previous_frame():
    seg = torch.tensor([[[1.0], [3.0], [6.0]]])
    assert frame_steps(seg, torch.tensor([[0.5]])).flatten().tolist() == [0.5, 2.0, 3.0]


def test_energy_score_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        energy_score(torch.zeros(1, 3, 2), torch.zeros(3, 2))


@pytest.mark.parametrize("decoder", DECODERS)
def test_bimodal_target_gives_bimodal_samples_where_mse_gives_the_mean(decoder):
    """The same state is followed by +a or by -a, each half the time: MSE learns 0, a frame no
    clip contains; the energy-score head must learn to draw one of the two."""
    torch.manual_seed(0)
    a, b = 2.0, 64
    c, f = DIMS["context_frames"], DIMS["feature_dim"]
    x = HeadInput(state=torch.ones(b, DIMS["state_dim"]), context=torch.zeros(b, c, f),
                  mask=torch.ones(b, c, dtype=torch.bool))
    energy = EnergyHead(**DIMS, decoder=decoder, hidden=32, noise_dim=4, dropout=0.0)
    mse = MSEHead(**DIMS, hidden=32, dropout=0.0)
    opt = torch.optim.Adam([*energy.parameters(), *mse.parameters()], lr=1e-2)
    for _ in range(200):
        sign = torch.randint(0, 2, (b, 1, 1)).float() * 2 - 1
        target = a * sign.expand(b, DIMS["segment_frames"], DIMS["out_dim"])
        loss = energy.loss(x, target)["loss"] + mse.loss(x, target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    energy.eval(), mse.eval()
    with torch.no_grad():
        level = draw(energy, x, seed=1).mean(dim=(1, 2))  # each sample's average value
        assert mse.mean(x).abs().max() < 0.3 * a
    assert ((level.abs() - a).abs() < 0.5 * a).float().mean() > 0.8  # near one of the two modes
    assert 0.2 < (level > 0).float().mean() < 0.8


@pytest.mark.parametrize("decoder", DECODERS)
def test_shapes_with_and_without_guidance(decoder):
    head, x = make_head(decoder), make_input(b=3)
    k, d = DIMS["segment_frames"], DIMS["out_dim"]
    target = torch.randn(3, k, d)
    head.train()
    out = head.loss(x, target)
    assert set(out) == {"loss", "energy_score", "energy_score_steps"} and out["loss"].dim() == 0
    out["loss"].backward()
    head.eval()
    assert head.mean(x).shape == (3, k, d)
    assert draw(head, x).shape == (3, k, d)
    assert draw(head, guided_input(x, torch.randn(3, DIMS["state_dim"])), guidance=3.0).shape == (3, k, d)


@pytest.mark.parametrize("decoder", DECODERS)
def test_guidance_zero_is_unconditional_and_one_is_conditional(decoder):
    head, x = make_head(decoder), make_input()
    uncond = HeadInput(state=torch.randn_like(x.state), context=x.context, mask=x.mask)
    both = guided_input(x, uncond.state)
    assert torch.allclose(draw(head, both, guidance=1.0), draw(head, x), atol=1e-5)
    assert torch.allclose(draw(head, both, guidance=0.0), draw(head, uncond), atol=1e-5)
    assert not torch.allclose(draw(head, both, guidance=3.0), draw(head, x), atol=1e-3)


@pytest.mark.parametrize("decoder", DECODERS)
def test_temperature_zero_is_deterministic_and_seed_reproduces(decoder):
    head, x = make_head(decoder), make_input()
    assert torch.equal(draw(head, x, temperature=0.0, seed=0), draw(head, x, temperature=0.0, seed=1))
    assert torch.equal(draw(head, x, seed=5), draw(head, x, seed=5))
    assert not torch.allclose(draw(head, x, seed=5), draw(head, x, seed=6))


def test_mean_averages_samples_and_is_repeatable():
    head, x = make_head(mean_samples=256), make_input()
    with torch.no_grad():
        mean = head.mean(x)
        assert torch.equal(mean, head.mean(x))
        draws = torch.stack([draw(head, x, seed=s) for s in range(256)])
    spread = (draws - draws.mean(0)).abs().mean()
    assert (mean - draws.mean(0)).abs().mean() < 0.3 * spread


def test_empty_context_starts_from_the_mean_frame():
    head, x = make_head(skip_frames=0), make_input(b=2)
    empty = HeadInput(state=x.state, context=x.context, mask=torch.zeros_like(x.mask))
    zeros = HeadInput(state=x.state, context=torch.zeros_like(x.context), mask=torch.zeros_like(x.mask))
    assert torch.equal(draw(head, empty), draw(head, zeros))


@pytest.mark.parametrize("decoder", DECODERS)
def test_state_dict_round_trip_gives_identical_samples(decoder):
    head, x = make_head(decoder, seed=0), make_input()
    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    buf.seek(0)
    fresh = make_head(decoder, seed=1)
    assert not torch.equal(draw(fresh, x), draw(head, x))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(draw(fresh, x), draw(head, x))


def test_config_instantiates_the_head():
    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/model/head/energy.yaml"))
    sampling = cfg.pop("sampling")  # generation's defaults, which MuseModel keeps beside the head
    head = instantiate(cfg, **DIMS)
    assert isinstance(head, EnergyHead) and head.samples >= 2 and sampling["temperature"] > 0


@pytest.mark.parametrize("key,value", [("samples", 1), ("beta", 2.0), ("beta", 0.0), ("decoder", "lstm"),
                                       ("noise_dim", 0), ("diff_weight", -1.0), ("skip_frames", 9),
                                       ("mean_samples", 0), ("dropout", 1.0)])
def test_bad_config_is_rejected_by_name(key, value):
    with pytest.raises(ValueError, match=f"model.head.{key}"):
        EnergyHead(**DIMS, **{key: value})
