"""musegen.text on real models, offline: the packaged MiniLM and a tiny GPT-2 built in conftest."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from musegen.lyrics import write_lyrics
from musegen.text import (
    HFEncoder,
    SentenceEncoder,
    TextEncoder,
    TextModelUnavailable,
    is_null_text,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "text"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here must pass with no network at all."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    """One loaded MiniLM for the module: loading dominates the cost on 2 cores."""
    return SentenceEncoder()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


# ---------------------------------------------------------------------------- MiniLM


def test_minilm_similarity_ordering_and_unit_norm(minilm: SentenceEncoder) -> None:
    assert isinstance(minilm, TextEncoder)
    assert minilm.dim == 384
    emb = minilm.encode(["calm piano melody", "soft piano music", "aggressive drum solo"])
    assert emb.shape == (3, 384) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    near, far = _cos(emb[0], emb[1]), _cos(emb[0], emb[2])
    assert near > far
    assert near == pytest.approx(0.68, abs=0.02)
    assert far == pytest.approx(0.41, abs=0.02)


def test_dim_is_read_without_loading_weights() -> None:
    enc = SentenceEncoder()
    assert enc.dim == 384
    assert enc._net is None  # only config.json was read


def test_identity_is_stable_and_config_rebuilds(minilm: SentenceEncoder) -> None:
    before = minilm.identity
    minilm.encode(["anything"])
    assert minilm.identity == before == SentenceEncoder().identity == "minilm:all-MiniLM-L6-v2"
    assert SentenceEncoder(max_length=64).identity != before  # truncation changes embeddings
    rebuilt = instantiate(minilm.config())
    assert isinstance(rebuilt, SentenceEncoder) and rebuilt.identity == before
    from_yaml = instantiate(OmegaConf.load(CONF / "minilm.yaml"))
    assert from_yaml.identity == before and from_yaml.config() == minilm.config()


def test_batched_equals_one_by_one(minilm: SentenceEncoder) -> None:
    texts = ["a", "slow violin melody in D minor", "upbeat electronic dance track with heavy bass",
             "piano", "slow violin melody in D minor"]
    batched = minilm.encode(texts)
    single = torch.cat([minilm.encode([t]) for t in texts])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[1], batched[4])


def test_loading_leaves_the_global_random_stream_alone(tiny_gpt2: Path) -> None:
    """A training run that loads the encoder to build its cache must draw the same random numbers
    afterwards as one that finds the cache built (bug: building the network drew its initial weights
    from the global generator, so the two trained differently)."""
    for enc in (SentenceEncoder(), HFEncoder(model=str(tiny_gpt2), batch_size=2)):
        torch.manual_seed(0)
        expected = torch.rand(4)
        torch.manual_seed(0)
        enc.encode(["calm piano melody"])
        assert torch.equal(torch.rand(4), expected), enc.identity


def test_empty_text_gives_zero_vector(minilm: SentenceEncoder) -> None:
    emb = minilm.encode(["", "piano", "   \n"])
    assert emb.shape == (3, 384)
    assert torch.count_nonzero(emb[0]) == 0 and torch.count_nonzero(emb[2]) == 0
    assert emb[1].norm() == pytest.approx(1.0, abs=1e-5)
    assert minilm.encode([]).shape == (0, 384)
    assert is_null_text(None) and is_null_text("") and is_null_text(" \t")
    assert not is_null_text("x")


@pytest.mark.parametrize(
    ("bad", "error", "needle"),
    [
        (["ok", 42], TypeError, "item 1 is int"),
        ([None], TypeError, "item 0 is NoneType"),
        (["ok", b"bytes"], TypeError, "item 1 is bytes"),
        (["ok", "lone \ud800 surrogate"], ValueError, "item 1 is not valid UTF-8"),
        ("a bare string", TypeError, "list of strings"),
    ],
)
def test_bad_input_is_named(minilm: SentenceEncoder, bad: object, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        minilm.encode(bad)  # type: ignore[arg-type]


def test_long_prompt_is_truncated_with_warning(minilm: SentenceEncoder,
                                               caplog: pytest.LogCaptureFixture) -> None:
    prompt = ("a slow and calm piano melody " * 400)[:10_000]
    assert len(prompt) == 10_000
    with caplog.at_level(logging.WARNING, logger="musegen.text"):
        emb = minilm.encode([prompt])
    assert emb.shape == (1, 384)
    assert emb.norm() == pytest.approx(1.0, abs=1e-5)
    assert any("truncated" in r.getMessage() and "10000 chars" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------- any HF model


def test_hf_encoder_on_tiny_local_gpt2(tiny_gpt2: Path, caplog: pytest.LogCaptureFixture) -> None:
    enc = HFEncoder(model=str(tiny_gpt2), batch_size=2)
    assert enc.dim == 32
    assert enc.identity == f"hf:{tiny_gpt2.name}:mean"
    texts = ["calm piano melody", "", "aggressive drum solo at a fast tempo", "sea"]
    emb = enc.encode(texts)
    assert emb.shape == (4, 32) and emb.dtype == torch.float32
    assert torch.count_nonzero(emb[1]) == 0 and torch.isfinite(emb).all()
    single = torch.cat([enc.encode([t]) for t in texts])
    torch.testing.assert_close(emb, single, atol=1e-5, rtol=1e-4)  # pad = eos + mask is exact
    with caplog.at_level(logging.WARNING, logger="musegen.text"):
        long = enc.encode(["love and light " * 200])  # model limit is 128 positions
    assert long.shape == (1, 32)
    assert any("longer than 128 tokens" in r.getMessage() for r in caplog.records)
    rebuilt = instantiate(enc.config())
    assert rebuilt.identity == enc.identity
    torch.testing.assert_close(rebuilt.encode(texts), emb)


def test_hf_yaml_instantiates_without_loading() -> None:
    enc = instantiate(OmegaConf.load(CONF / "hf.yaml"))
    assert isinstance(enc, HFEncoder) and enc.identity == "hf:distilgpt2:mean"


def test_write_lyrics_is_seeded(tiny_gpt2: Path) -> None:
    state = torch.random.get_rng_state()
    a = write_lyrics("calm piano melody", model=str(tiny_gpt2), max_new_tokens=12, seed=1)
    b = write_lyrics("calm piano melody", model=str(tiny_gpt2), max_new_tokens=12, seed=1)
    c = write_lyrics("calm piano melody", model=str(tiny_gpt2), max_new_tokens=12, seed=2)
    assert isinstance(a, str) and a.strip() and a == a.strip()
    assert a == b and a != c
    assert not a.startswith("calm piano melody")
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched


# ---------------------------------------------------------------------------- unavailable


@pytest.mark.parametrize("make", [
    lambda m: HFEncoder(model=m).dim,
    lambda m: HFEncoder(model=m).encode(["hello"]),
    lambda m: write_lyrics("hello", model=m),
], ids=["dim", "encode", "lyrics"])
def test_unknown_model_offline_gives_one_clear_error(make) -> None:  # noqa: ANN001
    model = "no-such-org/definitely-not-a-model"
    start = time.perf_counter()
    with pytest.raises(TextModelUnavailable) as info:
        make(model)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert model in message and "text.model=" in message and "huggingface-cli download" in message
    assert info.value.__cause__ is None and "\n" not in message


def test_missing_local_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(TextModelUnavailable, match="no such folder"):
        _ = HFEncoder(model=str(missing)).dim


def test_default_encoder_gives_transformers_bert_embeddings(minilm: SentenceEncoder) -> None:
    """musegen.bert runs the default weights without transformers: the same embeddings as
    transformers' BertModel with the sentence-transformers pooling, long texts truncated alike."""
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    texts = ["calm piano melody", "A fast, aggressive drum solo!", "chanson d’été au piano",
             "an ambient drone " * 120]
    folder = minilm._resolve()
    tokenizer, net = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=minilm.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = net(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    torch.testing.assert_close(minilm.encode(texts), expected, atol=2e-5, rtol=1e-4)


def test_default_encoder_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = ("import sys; from musegen.text import SentenceEncoder; e = SentenceEncoder(); "
            "print(e.dim, e.encode(['calm piano']).shape[1], 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1].split() == ["384", "384", "False"]
