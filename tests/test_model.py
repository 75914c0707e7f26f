"""The model (MuseModel: normaliser, conditioner, backbone, head) and the LightningModule around it."""
import pytest
import torch

from musegen.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_model
from musegen.model.conditioning import ConditioningDropout, guide, reference_embedding
from musegen.model.heads import HeadInput, MSEHead, Noise, Sampling, last_frame
from musegen.model.muse import MuseModel, build_head
from musegen.module import MuseModule

FEATURES = dict(sample_rate=22050, n_mfcc=20, n_chroma=12, n_fft=2048, hop_length=512, n_mels=128)
MSE = {"_target_": "musegen.model.heads.MSEHead", "hidden": 32, "dropout": 0.0, "skip_frames": 4,
       "sampling": {"guidance": 3.0, "temperature": 0.5}}


def model_args(**kw) -> dict:
    args = dict(features=FEATURES, text_encoder={"_target_": "musegen.text.SentenceEncoder"}, text_dim=8,
                backbone=dict(hidden=32, layers=1, dropout=0.0, fusion="film"), head=MSE, cond_dim=16,
                context_frames=12, segment_frames=4)
    args.update(kw)
    return args


def make_module(**kw) -> MuseModule:
    return MuseModule(**{**model_args(), "lr": 1e-2, **kw})


def make_batch(b=8, c=12, k=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(c + k, dtype=torch.float32)
    freq = torch.rand(b, 1, 32, generator=g) * 0.5 + 0.1
    seq = torch.sin(freq * t[None, :, None]) * 3 + torch.randn(b, 1, 32, generator=g)
    return {
        "context": seq[:, :c], "context_mask": torch.ones(b, c, dtype=torch.bool), "target": seq[:, c:],
        "text": torch.randn(b, d, generator=g), "reference": torch.stack([reference_embedding(s) for s in seq]),
        "label": torch.zeros(b, dtype=torch.long),
    }


@pytest.mark.parametrize("fusion", ["film", "concat"])
def test_prediction_shapes(fusion):
    model = MuseModel(**model_args(backbone=dict(hidden=16, layers=2, fusion=fusion))).eval()
    batch = make_batch(b=3)
    cond = model.condition(batch["text"], batch["reference"])
    assert model.mean(batch["context"], batch["context_mask"], cond).shape == (3, 4, 32)
    assert model.persistence(batch["context"], batch["context_mask"]).shape == (3, 4, 32)


def test_unknown_fusion_is_rejected():
    with pytest.raises(ValueError, match="fusion"):
        MuseModel(**model_args(backbone=dict(hidden=8, fusion="sum")))


def test_a_head_outside_musegen_is_refused():
    with pytest.raises(ValueError, match="model.head._target_"):
        build_head({"_target_": "os.system"}, state_dim=4, feature_dim=32, out_dim=32, segment_frames=4,
                   context_frames=8, n_mfcc=20)


def test_last_frame_respects_mask():
    ctx = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[False, True, True, False], [False, False, False, False]])
    assert last_frame(ctx, mask).flatten().tolist() == [2.0, 0.0]


def test_empty_context_prediction_depends_on_text():
    model = MuseModel(**model_args()).eval()
    ctx, mask = torch.zeros(2, 12, 32), torch.zeros(2, 12, dtype=torch.bool)
    ref = torch.zeros(2, 64)
    a = model.mean(ctx, mask, model.condition(torch.randn(2, 8), ref))
    b = model.mean(ctx, mask, model.condition(torch.randn(2, 8), ref))
    assert not torch.allclose(a, b)


def test_conditioning_dropout_replaces_text_with_the_null_vector():
    batch = make_batch()
    torch.manual_seed(0)
    _, drop_text, _ = ConditioningDropout(1.0, 0.0, 0.0)(batch["context_mask"])
    assert drop_text.all()
    _, drop_text, drop_ref = ConditioningDropout(0.0, 0.0, 0.0)(batch["context_mask"])
    assert not drop_text.any() and not drop_ref.any()
    dropout = ConditioningDropout(0.3, 0.0, 0.0)
    rate = torch.stack([dropout(batch["context_mask"])[1] for _ in range(200)]).float().mean()
    assert 0.2 < rate < 0.4
    # with the text dropped the text itself cannot change the prediction
    model = MuseModel(**model_args()).eval()
    ones = torch.ones(8, dtype=torch.bool)
    ctx, mask, ref = batch["context"], batch["context_mask"], batch["reference"]
    a = model.mean(ctx, mask, model.condition(batch["text"], ref, ones))
    b = model.mean(ctx, mask, model.condition(torch.randn(8, 8), ref, ones))
    assert torch.allclose(a, b)


def test_context_dropout_shortens_from_the_left():
    torch.manual_seed(0)
    mask = ConditioningDropout(0.0, 0.0, 1.0).shorten_context(torch.ones(64, 12, dtype=torch.bool))
    counts = mask.sum(1)
    assert counts.min() == 0 and counts.max() <= 11
    for row, n in zip(mask, counts):  # kept frames are the last n
        assert row[12 - int(n):].all()


def test_guidance_combines_as_documented():
    cond, uncond = torch.tensor([2.0]), torch.tensor([1.0])
    assert guide(cond, uncond, 0.0).item() == 1.0 and guide(cond, uncond, 1.0).item() == 2.0
    assert guide(cond, uncond, 3.0).item() == 4.0


def test_overfits_a_fixed_batch_to_high_skill():
    torch.manual_seed(0)
    model = MuseModel(**model_args())
    batch = make_batch(b=16)
    frames = torch.cat([batch["context"], batch["target"]], 1).reshape(-1, 32)
    model.normaliser.set_stats(frames.mean(0), frames.std(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        cond = model.condition(batch["text"], batch["reference"])
        loss = model.loss(batch["context"], batch["context_mask"], cond, batch["target"])["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        cond = model.condition(batch["text"], batch["reference"])
        pred = model.mean(batch["context"], batch["context_mask"], cond)
        target = model.target(batch["target"])
        persist = model.persistence(batch["context"], batch["context_mask"])
        skill = 1 - ((pred - target) ** 2)[..., :20].mean() / ((persist - target) ** 2)[..., :20].mean()
    assert losses[-1] < losses[0] / 4
    assert skill > 0.5


def test_invalid_dropout_is_rejected():
    with pytest.raises(ValueError, match="cond_dropout"):
        make_module(cond_dropout=1.5)


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    torch.manual_seed(0)
    module = make_module().eval()
    module.model.normaliser.set_stats(torch.randn(32), torch.rand(32) + 0.5)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    model = load_model(path)
    batch = make_batch()
    ctx, mask, text, ref = batch["context"], batch["context_mask"], batch["text"], batch["reference"]
    with torch.no_grad():
        a = module.model.mean(ctx, mask, module.model.condition(text, ref))
        b = model.mean(ctx, mask, model.condition(text, ref))
    assert torch.equal(a, b)
    assert model.segment_frames == 4 and model.default_sampling == {"guidance": 3.0, "temperature": 0.5}


def test_an_older_checkpoint_format_is_refused_with_its_version(tmp_path):
    module = make_module()
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(),
                "hyper_parameters": {**dict(module.hparams), "format_version": CHECKPOINT_FORMAT - 1}}, path)
    with pytest.raises(CheckpointError, match=f"format {CHECKPOINT_FORMAT - 1}, this musegen reads format"):
        load_model(path)


def test_weights_that_do_not_fit_the_model_are_refused_by_name(tmp_path):
    module = make_module()
    state = dict(module.state_dict())
    name = next(k for k in state if k.startswith("model.head."))
    state["model.head.retired.weight"] = state.pop(name)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(CheckpointError, match=rf"do not fit .*lacks {name[len('model.'):]}.*unknown head.retired"):
        load_model(path)


def test_skip_path_needs_that_many_context_frames():
    with pytest.raises(ValueError, match="skip_frames"):
        make_module(head={**MSE, "skip_frames": 20})


def test_linear_skip_path_alone_can_carry_the_prediction():
    head = MSEHead(state_dim=6, feature_dim=32, out_dim=32, segment_frames=4, context_frames=10, n_mfcc=20,
                   hidden=8, skip_frames=3)
    for p in head.mlp.parameters():
        torch.nn.init.zeros_(p)
    ctx, mask = torch.randn(2, 10, 32), torch.ones(2, 10, dtype=torch.bool)
    changed = ctx.clone()
    changed[:, -2] += 1.0  # a frame only the skip path sees (the MLP is zero, the last frame unchanged)
    state = torch.randn(2, 6)
    assert not torch.allclose(head.mean(HeadInput(state, ctx, mask)), head.mean(HeadInput(state, changed, mask)))


def test_mse_head_samples_with_noise_scaled_by_the_residual_and_temperature():
    head = MSEHead(state_dim=6, feature_dim=32, out_dim=32, segment_frames=4, context_frames=10, n_mfcc=20)
    head.calibrate(torch.full((32,), 4.0))  # residual std 2
    x = HeadInput(torch.randn(3, 6), torch.randn(3, 10, 32), torch.ones(3, 10, dtype=torch.bool))
    head.eval()
    mean = head.mean(x)
    still = head.sample(x, Sampling(guidance=None, temperature=0.0), Noise(range(3)))
    noisy = head.sample(x, Sampling(guidance=None, temperature=0.5), Noise(range(3)))
    assert torch.equal(still, mean)
    assert 0.8 < float((noisy - mean).std()) < 1.2  # 0.5 * 2


@pytest.mark.parametrize(("config", "message"), [
    ({"_target_": "musegen.model.token_head.TokenHead", "codebook_size": 8, "colour": 1},
     r"model\.head: musegen\.model\.token_head\.TokenHead has no setting colour; its settings are codebook_size"),
    ({"_target_": "musegen.model.nowhere.Head"}, r"'musegen\.model\.nowhere\.Head': no such head"),
])
def test_a_head_config_this_musegen_cannot_build_is_a_value_error_naming_it(config, message) -> None:
    """A config or checkpoint of another version used to escape as Hydra's wrapped TypeError (a traceback)."""
    with pytest.raises(ValueError, match=message):
        build_head(config, state_dim=4, feature_dim=32, out_dim=32, segment_frames=4, context_frames=8, n_mfcc=20)


def test_a_quantised_context_token_model_reads_real_frames_as_their_centroids() -> None:
    """Training reads the context as generation feeds it back: a window of real frames and the same
    window replaced by its codebook centroids give the backbone the same input, so the same state."""
    head = {"_target_": "musegen.model.token_head.TokenHead", "codebook_size": 8, "kmeans_samples": 64,
            "hidden": 16, "embed": 8, "dropout": 0.0, "quantised_context": True}
    model = MuseModel(**model_args(head=head)).eval()
    batch = make_batch()
    frames = batch["context"].flatten(0, 1)
    model.normaliser.set_stats(frames.mean(0), frames.std(0))
    model.head.prepare([model.normaliser.normalise(frames)])
    cond = model.condition(batch["text"], batch["reference"])
    mask = batch["context_mask"]
    codebook, norm = model.head.codebook, model.normaliser
    centroids = norm.denormalise(codebook.decode(codebook.encode(norm.normalise(batch["context"]))))
    with torch.no_grad():
        real, quantised = model(batch["context"], mask, cond).state, model(centroids, mask, cond).state
    assert torch.allclose(real, quantised, atol=1e-5)
    model.head.quantised_context = False
    with torch.no_grad():
        assert not torch.allclose(model(batch["context"], mask, cond).state, real, atol=1e-3)


def test_finishing_a_generation_moves_a_token_models_frames_by_its_envelope_in_raw_units() -> None:
    """MuseModel.finish: the head's envelope in raw units on the predicted dimensions, chroma kept in
    [0, 1]; a head without a finishing touch leaves the frames exactly as sampled."""
    head = {"_target_": "musegen.model.token_head.TokenHead", "codebook_size": 8, "kmeans_samples": 64,
            "hidden": 16, "embed": 8, "dropout": 0.0, "envelope_frames": 4}
    model = MuseModel(**model_args(head=head)).eval()
    batch = make_batch()
    frames = batch["context"].flatten(0, 1)
    frames[:, 20:] = torch.rand(frames[:, 20:].shape, generator=torch.Generator().manual_seed(0))   # chroma in [0, 1]
    model.normaliser.set_stats(frames.mean(0), frames.std(0))
    model.head.prepare([model.normaliser.normalise(frames)])
    norm, codebook = model.normaliser, model.head.codebook
    token = norm.denormalise(codebook.centroids[:1]).expand(6, -1)[None]   # one token for six frames
    empty, none = torch.zeros(1, 12, 32), torch.zeros(1, 12, dtype=torch.bool)
    finished = model.finish(token, empty, none)
    envelope = model.head.envelope[[0, 1, 2, 3, 3, 3]] * norm.std
    expected = token + envelope
    expected[..., 20:] = expected[..., 20:].clamp(0.0, 1.0)
    assert torch.allclose(finished, expected, atol=1e-4)
    assert not torch.allclose(finished, token, atol=1e-3)
    plain = MuseModel(**model_args()).eval()
    sampled = frames[None, :6]
    assert torch.equal(plain.finish(sampled, empty, none), sampled)
