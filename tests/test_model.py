"""The network and the LightningModule on small fixed batches."""
import pytest
import torch

from musegen.checkpoint import load_predictor
from musegen.model import MuseNet, last_frame
from musegen.module import MuseModule, module_from_checkpoint

FEATURES = dict(sample_rate=22050, n_mfcc=20, n_chroma=12, n_fft=2048, hop_length=512, n_mels=128)


def make_module(**kw) -> MuseModule:
    args = dict(net=dict(hidden=32, layers=1, dropout=0.0, cond_dim=16, fusion="film"), text_dim=8,
                features=FEATURES, text_encoder={"_target_": "musegen.text.SentenceEncoder"},
                context_frames=12, segment_frames=4, lr=1e-2)
    args.update(kw)
    return MuseModule(**args)


def make_batch(b=8, c=12, k=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(c + k, dtype=torch.float32)
    freq = torch.rand(b, 1, 32, generator=g) * 0.5 + 0.1
    seq = torch.sin(freq * t[None, :, None]) * 3 + torch.randn(b, 1, 32, generator=g)
    return {
        "context": seq[:, :c], "context_mask": torch.ones(b, c, dtype=torch.bool), "target": seq[:, c:],
        "text": torch.randn(b, d, generator=g), "reference": torch.cat([seq.mean(1), seq.std(1)], -1),
        "label": torch.zeros(b, dtype=torch.long),
    }


@pytest.mark.parametrize("fusion", ["film", "concat"])
def test_forward_shapes(fusion):
    net = MuseNet(feature_dim=32, out_dim=32, text_dim=8, ref_dim=64, segment_frames=4, hidden=16, layers=2,
                  cond_dim=8, fusion=fusion)
    ctx, mask = torch.randn(3, 10, 32), torch.ones(3, 10, dtype=torch.bool)
    cond = net.conditioning(torch.randn(3, 8), torch.randn(3, 64))
    assert net(ctx, mask, cond).shape == (3, 4, 32)


def test_unknown_fusion_is_rejected():
    with pytest.raises(ValueError, match="fusion"):
        MuseNet(fusion="sum")


def test_last_frame_respects_mask():
    ctx = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[False, True, True, False], [False, False, False, False]])
    assert last_frame(ctx, mask).flatten().tolist() == [2.0, 0.0]


def test_empty_context_prediction_depends_on_text():
    net = MuseNet(feature_dim=32, out_dim=32, text_dim=8, ref_dim=64, segment_frames=4, hidden=16, layers=1, cond_dim=8)
    ctx, mask = torch.zeros(2, 10, 32), torch.zeros(2, 10, dtype=torch.bool)
    a = net(ctx, mask, net.conditioning(torch.randn(2, 8), torch.zeros(2, 64)))
    b = net(ctx, mask, net.conditioning(torch.randn(2, 8), torch.zeros(2, 64)))
    assert not torch.allclose(a, b)


def test_guidance_dropout_replaces_text_with_null():
    m = make_module(cond_dropout=1.0)
    torch.manual_seed(0)
    batch = make_batch()
    _, drop_text, drop_ref = m._inputs(batch, train=True)
    assert drop_text.all()
    m2 = make_module(cond_dropout=0.0)
    _, drop_text, _ = m2._inputs(batch, train=True)
    assert not drop_text.any()
    m3 = make_module(cond_dropout=0.3)
    torch.manual_seed(1)
    rate = torch.stack([m3._inputs(batch, train=True)[1] for _ in range(200)]).float().mean()
    assert 0.2 < rate < 0.4
    # with the text dropped the text itself cannot change the prediction
    ones = torch.ones(8, dtype=torch.bool)
    a = m.predict_next(batch["context"], batch["context_mask"], batch["text"], batch["reference"], ones, None)
    b = m.predict_next(batch["context"], batch["context_mask"], torch.randn(8, 8), batch["reference"], ones, None)
    assert torch.allclose(a, b)


def test_context_dropout_shortens_from_the_left():
    m = make_module(context_dropout=1.0)
    torch.manual_seed(0)
    mask = m._shorten_context(torch.ones(64, 12, dtype=torch.bool))
    counts = mask.sum(1)
    assert counts.min() == 0 and counts.max() <= 11
    for row, n in zip(mask, counts):  # kept frames are the last n
        assert row[12 - int(n):].all()


def test_overfits_a_fixed_batch_to_high_skill():
    torch.manual_seed(0)
    m = make_module(cond_dropout=0.0, ref_dropout=0.0, context_dropout=0.0)
    batch = make_batch(b=16)
    frames = torch.cat([batch["context"], batch["target"]], 1).reshape(-1, 32)
    m.set_stats(frames.mean(0), frames.std(0))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(300):
        pred, target, _ = m._step(batch, train=False)
        loss = m._loss(pred, target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        pred, target, mask = m._step(batch, train=False)
        persist = last_frame(m.normalise(batch["context"]), mask)[:, None].expand_as(target)
        model_mse = ((pred - target) ** 2)[..., :20].mean()
        persist_mse = ((persist - target) ** 2)[..., :20].mean()
    assert loss.item() < first
    assert 1 - model_mse / persist_mse > 0.5


def test_invalid_dropout_is_rejected():
    with pytest.raises(ValueError, match="cond_dropout"):
        make_module(cond_dropout=1.5)


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    torch.manual_seed(0)
    m = make_module().eval()
    batch = make_batch()
    m.set_stats(torch.randn(32), torch.rand(32) + 0.5)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    loaded, predictor = module_from_checkpoint(path), load_predictor(path)  # training and inference classes
    args = (batch["context"], batch["context_mask"], batch["text"], batch["reference"])
    with torch.no_grad():
        assert torch.equal(m.predict_next(*args), loaded.predict_next(*args))
        assert torch.equal(m.predict_next(*args), predictor.predict_next(*args))
        assert torch.equal(m.persistence(*args[:2]), predictor.persistence(*args[:2]))
    assert predictor.hparams.segment_frames == m.hparams.segment_frames


def test_skip_path_needs_that_many_context_frames():
    with pytest.raises(ValueError, match="skip_frames"):
        make_module(net=dict(hidden=8, layers=1, cond_dim=4, skip_frames=20), context_frames=12)


def test_linear_skip_path_alone_can_carry_the_prediction():
    net = MuseNet(feature_dim=32, out_dim=32, text_dim=8, ref_dim=64, segment_frames=4, hidden=8, layers=1,
                  cond_dim=4, skip_frames=3)
    for p in net.head.parameters():
        torch.nn.init.zeros_(p)
    ctx, mask = torch.randn(2, 10, 32), torch.ones(2, 10, dtype=torch.bool)
    cond = net.conditioning(torch.randn(2, 8), torch.randn(2, 64))
    changed = ctx.clone()
    changed[:, -2] += 1.0  # a frame only the skip path sees directly (the head is zero)
    assert not torch.allclose(net(ctx, mask, cond), net(changed, mask, cond))
