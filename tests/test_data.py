"""Data path: sources -> cache -> DataModule, on tiny generated audio (real librosa/soundfile/sklearn)."""
from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from musegen import features as F
from musegen.data import cache as C
from musegen.data.clips import Clip
from musegen.data.datamodule import MuseDataModule, split_groups
from musegen.data.sources import DataSourceError, FolderSource, KaggleSource, caption_from_name
from musegen.features import FeatureConfig

CFG = FeatureConfig()


def tone(path: Path, freq: float, sr: int = 22050, seconds: float = 1.0, channels: int = 1,
         timbre: str = "sine", seed: int = 0) -> Path:
    """A small test signal: sine, saw-like (harmonics) or a decaying noise 'drum' hit."""
    t = np.arange(int(sr * seconds)) / sr
    if timbre == "saw":
        y = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6))
    elif timbre == "drum":
        y = np.random.default_rng(seed).standard_normal(t.size) * np.exp(-8 * (t % 0.25))
    else:
        y = np.sin(2 * np.pi * freq * t)
    y = (0.3 * y / np.max(np.abs(y))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([y] * channels, axis=1) if channels > 1 else y, sr)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="module")
def encoder():
    from musegen.text import SentenceEncoder

    return SentenceEncoder()


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory) -> Path:
    """The Kaggle layout in miniature, with the misspelled class and bad files of every kind."""
    root = tmp_path_factory.mktemp("kaggle")
    train = root / "Train_submission" / "Train_submission"
    test = root / "Test_submission" / "Test_submission"
    tone(train / "guitar_1.wav", 196, sr=22050, timbre="saw")
    tone(train / "drum_1.wav", 0, sr=16000, timbre="drum")
    tone(train / "violin_1.wav", 440, sr=44100, channels=2, timbre="saw")
    tone(train / "piano_1.wav", 262, sr=16000)
    (train / "corrupt.wav").write_bytes(np.random.default_rng(1).bytes(3000))
    (train / "empty.wav").write_bytes(b"")
    sf.write(train / "silent.wav", np.zeros(22050, dtype=np.float32), 22050)
    tone(train / "short.wav", 440, seconds=0.05)
    write_csv(root / "Metadata_Train.csv", ["FileName", "Class"], [
        ["guitar_1.wav", "Sound_Guitar"], ["drum_1.wav", "Sound_Drum"], ["violin_1.wav", "Sound_Violin"],
        ["piano_1.wav", "Sound_Piano"], ["corrupt.wav", "Sound_Piano"], ["missing.wav", "Sound_Drum"],
        ["empty.wav", "Sound_Violin"], ["silent.wav", "Sound_Violin"], ["short.wav", "Sound_Guitar"],
    ])
    tone(test / "guitar_t.wav", 330, sr=32000, channels=2, timbre="saw")
    tone(test / "piano_t.wav", 523, sr=22050)
    write_csv(root / "Metadata_Test.csv", ["FileName", "Class"], [
        ["guitar_t.wav", "Sound_Guiatr"], ["piano_t.wav", "Sound_Piano"],
    ])
    return root


@pytest.fixture(scope="module")
def grouped_root(tmp_path_factory) -> Path:
    """12 pieces (3 per instrument), 2 clips each, described by a metadata.csv with groups."""
    root = tmp_path_factory.mktemp("grouped")
    rows = []
    for li, (label, timbre) in enumerate([("guitar", "saw"), ("drum", "drum"), ("violin", "saw"), ("piano", "sine")]):
        for piece in range(3):
            for part in range(2):
                name = f"{label}/{label}_{piece}_{part}.wav"
                tone(root / name, 150 * (li + 1) + 40 * piece + 10 * part, seconds=0.8 + 0.3 * part,
                     timbre=timbre, seed=piece * 2 + part)
                rows.append([name, f"a {label} recording", label, f"{label}-piece{piece}"])
    write_csv(root / "metadata.csv", ["file", "caption", "label", "group"], rows)
    return root


# -- features -----------------------------------------------------------------------------------

def test_features_match_librosa(kaggle_root: Path) -> None:
    y = F.load_audio(kaggle_root / "Train_submission/Train_submission/violin_1.wav", CFG.sample_rate)
    frames = F.extract(y, CFG)
    mfcc = librosa.feature.mfcc(y=y, sr=22050, n_mfcc=20, n_fft=2048, hop_length=512, n_mels=128)
    chroma = librosa.feature.chroma_stft(y=y, sr=22050, n_chroma=12, n_fft=2048, hop_length=512)
    assert frames.shape == (mfcc.shape[1], 32) and frames.dtype == np.float32
    np.testing.assert_allclose(frames[:, :20], mfcc.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(frames[:, 20:], chroma.T, rtol=1e-5, atol=1e-6)


# -- sources ------------------------------------------------------------------------------------

def test_kaggle_source_labels_and_misspelling(kaggle_root: Path) -> None:
    clips = KaggleSource(root=str(kaggle_root)).clips()
    by_name = {Path(c.path).name: c for c in clips}
    assert len(clips) == 11
    assert by_name["guitar_t.wav"].label == "guitar"  # Sound_Guiatr
    assert {c.label for c in clips} == {"guitar", "drum", "violin", "piano"}
    assert "missing.wav" in by_name and not Path(by_name["missing.wav"].path).exists()
    assert all(c.label in c.caption for c in clips)
    assert len({c.group for c in clips}) == len(clips)  # each recording is its own piece
    assert [c.path for c in KaggleSource(root=str(kaggle_root), splits=["test"]).clips()] == [
        by_name["guitar_t.wav"].path, by_name["piano_t.wav"].path]
    with pytest.raises(ValueError, match="splits"):
        KaggleSource(root=str(kaggle_root), splits=["valid"])


def test_kaggle_offline_is_one_clear_error(monkeypatch) -> None:
    import kagglehub
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DataSourceError) as err:
        KaggleSource().clips()
    msg = str(err.value)
    assert "could not download" in msg and "data.source.root=" in msg and "musical-instruments" in msg


def test_folder_source_without_metadata(tmp_path: Path) -> None:
    tone(tmp_path / "jazz" / "sax_solo_01.wav", 300)
    tone(tmp_path / "rock" / "electricGuitar-2.flac", 200)
    (tmp_path / "jazz" / "notes.txt").write_text("not audio")
    (tmp_path / "jazz" / "sax_solo_01.mid").write_bytes(b"MThd")
    clips = FolderSource(str(tmp_path)).clips()
    assert [(c.caption, c.label, c.group) for c in clips] == [
        ("jazz sax solo", "jazz", "jazz/sax_solo_01"), ("rock electric guitar", "rock", "rock/electricGuitar-2")]
    assert clips[0].midi == str(tmp_path / "jazz" / "sax_solo_01.mid") and clips[1].midi is None
    assert caption_from_name(Path("piano/piano_03.wav")) == "piano"


def test_folder_source_with_metadata(grouped_root: Path) -> None:
    clips = FolderSource(str(grouped_root)).clips()
    assert len(clips) == 24
    c = next(c for c in clips if c.path.endswith("violin_1_0.wav"))
    assert (c.caption, c.label, c.group) == ("a violin recording", "violin", "violin-piece1")


def test_folder_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="does not exist"):
        FolderSource(str(tmp_path / "nope")).clips()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataSourceError, match="no audio"):
        FolderSource(str(tmp_path)).clips()


# -- cache --------------------------------------------------------------------------------------

def test_cache_skips_bad_files_and_hits_second_time(kaggle_root: Path, tmp_path: Path, encoder, monkeypatch) -> None:
    clips = KaggleSource(root=str(kaggle_root)).clips()
    path = C.build_cache(clips, CFG, encoder, tmp_path, num_workers=1, source="kaggle-fixture")
    cache = C.load_cache(path)
    report = json.loads((path / "report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons.keys() == {"corrupt.wav", "missing.wav", "empty.wav", "silent.wav", "short.wav"}
    for name, why in [("corrupt.wav", "not readable"), ("missing.wav", "no such file"), ("empty.wav", "empty"),
                      ("silent.wav", "silent"), ("short.wav", "too short")]:
        assert why in reasons[name] and name in reasons[name]
    assert len(cache) == report["usable"] == 6
    assert cache.frames.dtype == torch.float32 and cache.frames.shape == (int(cache.offsets[-1]), 32)
    assert (cache.lengths == 44).all()  # 1 s at 22050 Hz after resampling, whatever the file's rate
    assert cache.text.shape == (len(set(cache.captions)), 384)
    i = cache.labels.index("guitar")
    torch.testing.assert_close(cache.clip_text(i), encoder.encode([cache.captions[i]])[0], atol=1e-5, rtol=0)
    # the build runs BLAS single-threaded, so only the last float bits may differ from a direct call
    np.testing.assert_allclose(cache.clip_frames(i).numpy(), F.extract_file(cache.paths[i], CFG), rtol=1e-5, atol=1e-4)

    def no_audio(*a, **k):
        raise AssertionError("audio touched on a cache hit")

    monkeypatch.setattr(F, "extract", no_audio)
    monkeypatch.setattr(F, "load_audio", no_audio)
    assert C.build_cache(clips, CFG, encoder, tmp_path, num_workers=1) == path
    # anything the cache depends on changes the key
    assert C.cache_key(clips, CFG, encoder.identity) == path.name
    assert C.cache_key(clips, FeatureConfig(n_mfcc=13), encoder.identity) != path.name
    assert C.cache_key(clips, CFG, "other-encoder") != path.name
    assert C.cache_key(clips[:-1], CFG, encoder.identity) != path.name


def test_nothing_usable_is_one_clear_error(tmp_path: Path, encoder) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(C.CacheError, match="no usable audio.*my-source.*report") as err:
        C.build_cache([Clip(str(bad), "x", "x", "x")], CFG, encoder, tmp_path / "cache", source="my-source")
    report = Path(str(err.value).rsplit(" ", 1)[-1])
    assert json.loads(report.read_text())["skipped"][0]["path"] == str(bad)


def test_interrupted_build_is_never_trusted(grouped_root: Path, tmp_path: Path, encoder, monkeypatch) -> None:
    clips = FolderSource(str(grouped_root)).clips()[:6]
    key = C.cache_key(clips, CFG, encoder.identity)
    real_extract, calls = F.extract, []

    def dies_on_third(y, cfg):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # like a Ctrl-C or kill in the middle of the build
        return real_extract(y, cfg)

    monkeypatch.setattr(F, "extract", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        C.build_cache(clips, CFG, encoder, tmp_path, num_workers=1)
    monkeypatch.setattr(F, "extract", real_extract)
    assert C.find_cache(tmp_path, key) is None and list(tmp_path.iterdir()) == []

    # a killed process leaves a temp dir and (say, from a copy) a final dir without its marker
    stale = tmp_path / f".{key}.tmp-{socket.gethostname()}-4194999-deadbeef"
    stale.mkdir()
    (stale / "frames.pt").write_bytes(b"half")
    (tmp_path / key).mkdir()
    (tmp_path / key / "frames.pt").write_bytes(b"half")
    with pytest.raises(C.CacheError, match="not a complete cache"):
        C.load_cache(tmp_path / key)
    path = C.build_cache(clips, CFG, encoder, tmp_path, num_workers=1)
    assert path == tmp_path / key and len(C.load_cache(path)) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [key]


def test_two_workers_equal_one(grouped_root: Path, tmp_path: Path, encoder) -> None:
    clips = FolderSource(str(grouped_root)).clips()[:8]
    one = C.load_cache(C.build_cache(clips, CFG, encoder, tmp_path / "a", num_workers=1))
    two = C.load_cache(C.build_cache(clips, CFG, encoder, tmp_path / "b", num_workers=2))
    assert torch.equal(one.frames, two.frames) and torch.equal(one.offsets, two.offsets)
    assert torch.equal(one.text, two.text) and one.paths == two.paths
    # long files are cut at max_seconds before extraction (a new key, so a new cache)
    capped = C.load_cache(C.build_cache(clips[:2], CFG, encoder, tmp_path / "a", num_workers=1, max_seconds=0.5))
    assert capped.lengths.tolist() == [22, 22] and capped.path.name != one.path.name
    torch.testing.assert_close(capped.clip_frames(0)[:18, :20], one.clip_frames(0)[:18, :20])


# -- splits and DataModule -----------------------------------------------------------------------

def test_split_groups_stratified_and_tiny() -> None:
    groups = [f"g{i}" for i in range(40) for _ in range(2)]
    labels = [["a", "b", "c", "d"][i % 4] for i in range(40) for _ in range(2)]
    parts = split_groups(groups, labels, 0.15, 0.15, seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [28, 6, 6]
    assert len(set().union(*parts.values())) == 40 and sum(map(len, parts.values())) == 40
    test_labels = {labels[groups.index(g)] for g in parts["test"]}
    assert test_labels == {"a", "b", "c", "d"}  # stratified
    assert parts == split_groups(groups, labels, 0.15, 0.15, seed=0)
    assert parts != split_groups(groups, labels, 0.15, 0.15, seed=1)
    tiny = split_groups(["x", "y", "z"], ["a", "a", "b"], 0.15, 0.15, seed=0)
    assert [len(tiny[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    two = split_groups(["x", "y"], ["a", "b"], 0.15, 0.15, seed=0)
    assert [len(two[s]) for s in ("train", "val", "test")] == [1, 1, 0]


@pytest.fixture(scope="module")
def datamodule(grouped_root: Path, tmp_path_factory, encoder) -> MuseDataModule:
    from omegaconf import OmegaConf

    dm = MuseDataModule(FolderSource(str(grouped_root)), features=OmegaConf.create(CFG.to_dict()),
                        cache_dir=str(tmp_path_factory.mktemp("cache")), text_encoder=encoder,
                        context_frames=32, segment_frames=16, window_stride=8, batch_size=4, num_workers=1,
                        val_fraction=0.25, test_fraction=0.25, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_datamodule_split_has_no_leakage_and_train_stats(datamodule: MuseDataModule) -> None:
    dm, cache = datamodule, datamodule.cache
    assert type(dm.hparams["features"]) is dict and "source" not in dm.hparams and "text_encoder" not in dm.hparams
    groups = {s: {cache.groups[i] for i in dm.clip_indices(s)} for s in ("train", "val", "test")}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert sorted(dm.clip_indices("train") + dm.clip_indices("val") + dm.test_clips()) == list(range(24))
    assert [len(groups[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    train = torch.cat([cache.clip_frames(i) for i in dm.clip_indices("train")]).double()
    torch.testing.assert_close(dm.stats["mean"], train.mean(0).float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dm.stats["std"], train.std(0, unbiased=False).clamp_min(1e-3).float(),
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(dm.stats["mean"], cache.frames.double().mean(0).float(), rtol=1e-3, atol=1e-3)
    assert dm.labels == ["drum", "guitar", "piano", "violin"] and dm.text_dim == 384


def test_windows_shapes_masks_and_content(datamodule: MuseDataModule) -> None:
    dm, cache = datamodule, datamodule.cache
    ds = dm.datasets["train"]
    c = dm.clip_indices("train")[0]
    T = int(cache.lengths[c])
    starts = ds.starts[ds.clip_ids == c].tolist()
    assert starts == list(range(0, T - 16 + 1, 8))
    frames = cache.clip_frames(c)
    for j in torch.nonzero(ds.clip_ids == c).flatten().tolist():
        item, t = ds[j], int(ds.starts[j])
        assert item["context"].shape == (32, 32) and item["target"].shape == (16, 32)
        assert item["context_mask"].dtype == torch.bool and item["context_mask"].sum() == min(t, 32)
        assert not item["context_mask"][: 32 - min(t, 32)].any()
        torch.testing.assert_close(item["target"], frames[t:t + 16])
        torch.testing.assert_close(item["context"][32 - min(t, 32):], frames[max(0, t - 32):t])
        assert (item["context"][: 32 - min(t, 32)] == 0).all()
        assert item["text"].shape == (384,) and item["reference"].shape == (64,)
        torch.testing.assert_close(item["reference"][:32], frames.mean(0))
        assert dm.labels[int(item["label"])] == cache.labels[c] and int(item["clip"]) == c
    first = ds[int(torch.nonzero(ds.clip_ids == c).flatten()[0])]
    assert not first["context_mask"].any() and (first["context"] == 0).all()  # t = 0: text alone
    batch = next(iter(dm.train_dataloader()))
    assert batch["context"].shape == (4, 32, 32) and batch["text"].shape == (4, 384)
    assert batch["label"].dtype == torch.long and batch["context_mask"].dtype == torch.bool
    assert len(dm.val_dataloader().dataset) > 0 and len(dm.test_dataloader().dataset) > 0


def test_datamodule_rejects_bad_arguments(grouped_root: Path) -> None:
    with pytest.raises(ValueError, match="segment_frames"):
        MuseDataModule(FolderSource(str(grouped_root)), cache_dir="x", segment_frames=0)
    with pytest.raises(ValueError, match="val_fraction"):
        MuseDataModule(FolderSource(str(grouped_root)), cache_dir="x", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="unknown key"):
        MuseDataModule(FolderSource(str(grouped_root)), cache_dir="x", features={"n_mfccs": 13})


def test_cache_key_does_not_depend_on_the_working_directory(tmp_path, monkeypatch, encoder):
    """A relative source root seen from two directories is one dataset: one cache, not two."""
    audio = tmp_path / "songs"
    audio.mkdir()
    sr = 22050
    t = np.arange(sr) / sr
    sf.write(audio / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32), sr)
    keys = []
    for cwd, root in ((tmp_path, "songs"), (audio, ".")):
        monkeypatch.chdir(cwd)
        dm = MuseDataModule(FolderSource(root), cache_dir=str(tmp_path / "cache"), text_encoder=encoder)
        keys.append(dm.cache_key())
    assert keys[0] == keys[1]
