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
from musegen.data import build as B
from musegen.data import cache as C
from musegen.data.clips import Clip
from musegen.data.datamodule import MuseDataModule, TooShortError
from musegen.data.sources import DataSourceError, FolderSource, KaggleSource, caption_from_name
from musegen.data.splits import split_groups
from musegen.data.windows import window_index
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


@pytest.mark.parametrize("name, caption", [
    ("loop_amen.flac", "loop amen"),
    ("drum_heavy_kick.flac", "drum heavy kick"),
    ("bd_808.flac", "bd 808"),                    # a number that is part of the name is kept
    ("tabla_ke1.flac", "tabla ke"),               # a trailing take/index number is not
    ("TR909kick.wav", "tr 909 kick"),
    ("loops/loop120bpm_Funky.wav", "loops loop 120 bpm funky"),
    ("My Song (live) 2019.mp3", "my song live 2019"),
])
def test_captions_from_names_read_like_text(name: str, caption: str) -> None:
    assert caption_from_name(Path(name)) == caption


def test_metadata_overrides_names(tmp_path: Path) -> None:
    tone(tmp_path / "loop_amen.flac", 300)
    tone(tmp_path / "drum_heavy_kick.flac", 0, timbre="drum")
    write_csv(tmp_path / "metadata.csv", ["file", "caption", "label"], [["loop_amen.flac", "a breakbeat", "drums"]])
    by_name = {Path(c.path).name: c for c in FolderSource(str(tmp_path)).clips()}
    assert (by_name["loop_amen.flac"].caption, by_name["loop_amen.flac"].label) == ("a breakbeat", "drums")
    assert by_name["drum_heavy_kick.flac"].caption == "drum heavy kick"


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
    path = B.build_cache(clips, CFG, encoder, tmp_path, num_workers=1, source="kaggle-fixture")
    cache = C.load_cache(path)
    report = json.loads((path / "report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons.keys() == {"corrupt.wav", "missing.wav", "empty.wav", "silent.wav"}
    for name, why in [("corrupt.wav", "not readable"), ("missing.wav", "no such file"), ("empty.wav", "empty"),
                      ("silent.wav", "silent")]:
        assert why in reasons[name] and name in reasons[name]
    assert len(cache) == report["usable"] == report["clips"] == 7
    assert report["seconds"] == {"total": pytest.approx(7.05), "used": pytest.approx(6.05)}  # silent.wav: 1 s unused
    assert cache.frames.dtype == torch.float32 and cache.frames.shape == (int(cache.offsets[-1]), 32)
    # 1 s at 22050 Hz after resampling, whatever the file's rate; the 0.05 s file is kept: length is the
    # datamodule's business (the model's window), not the cache's
    lengths = dict(zip((Path(p).name for p in cache.paths), cache.lengths.tolist()))
    assert lengths.pop("short.wav") == 3 and set(lengths.values()) == {44}
    assert cache.starts == [0.0] * 7
    assert cache.text.shape == (len(set(cache.captions)), 384)
    i = cache.labels.index("guitar")
    torch.testing.assert_close(cache.clip_text(i), encoder.encode([cache.captions[i]])[0], atol=1e-5, rtol=0)
    # the build runs BLAS single-threaded, so only the last float bits may differ from a direct call
    np.testing.assert_allclose(cache.clip_frames(i).numpy(), F.extract_file(cache.paths[i], CFG), rtol=1e-5, atol=1e-4)

    def no_audio(*a, **k):
        raise AssertionError("audio touched on a cache hit")

    monkeypatch.setattr(F, "extract", no_audio)
    monkeypatch.setattr(F, "load_audio", no_audio)
    assert B.build_cache(clips, CFG, encoder, tmp_path, num_workers=1) == path
    # anything the cache depends on changes the key
    assert C.cache_key(clips, CFG, encoder.identity) == path.name
    assert C.cache_key(clips, FeatureConfig(n_mfcc=13), encoder.identity) != path.name
    assert C.cache_key(clips, CFG, "other-encoder") != path.name
    assert C.cache_key(clips[:-1], CFG, encoder.identity) != path.name


def test_nothing_usable_is_one_clear_error(tmp_path: Path, encoder) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(C.CacheError, match="no usable audio.*my-source.*report") as err:
        B.build_cache([Clip(str(bad), "x", "x", "x")], CFG, encoder, tmp_path / "cache", source="my-source")
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
        B.build_cache(clips, CFG, encoder, tmp_path, num_workers=1)
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
    path = B.build_cache(clips, CFG, encoder, tmp_path, num_workers=1)
    assert path == tmp_path / key and len(C.load_cache(path)) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [key]


def test_two_workers_equal_one(grouped_root: Path, tmp_path: Path, encoder) -> None:
    clips = FolderSource(str(grouped_root)).clips()[:8]
    one = C.load_cache(B.build_cache(clips, CFG, encoder, tmp_path / "a", num_workers=1))
    two = C.load_cache(B.build_cache(clips, CFG, encoder, tmp_path / "b", num_workers=2))
    assert torch.equal(one.frames, two.frames) and torch.equal(one.offsets, two.offsets)
    assert torch.equal(one.text, two.text) and one.paths == two.paths
    # max_file_seconds reads only the start of each file (a new key, so a new cache)
    capped = C.load_cache(B.build_cache(clips[:2], CFG, encoder, tmp_path / "a", num_workers=1, max_file_seconds=0.5))
    assert capped.lengths.tolist() == [22, 22] and capped.path.name != one.path.name
    torch.testing.assert_close(capped.clip_frames(0)[:18, :20], one.clip_frames(0)[:18, :20])
    assert capped.report["seconds"] == {"total": pytest.approx(0.8 + 1.1), "used": pytest.approx(1.0)}
    # clip_seconds splits them instead: 0.8 s -> 0.5 + 0.3, 1.1 s -> 0.5 + 0.5 + 0.1, one group per file
    split = C.load_cache(B.build_cache(clips[:2], CFG, encoder, tmp_path / "a", num_workers=1, clip_seconds=0.5))
    assert split.starts == pytest.approx([0, 0.5, 0, 0.5, 1.0]) and split.lengths.tolist() == [22, 13, 22, 22, 5]
    assert split.groups == [clips[0].group] * 2 + [clips[1].group] * 3
    assert split.report["seconds"]["used"] == split.report["seconds"]["total"] == pytest.approx(1.9)


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
    assert sorted(dm.clip_indices("train") + dm.clip_indices("val") + dm.clip_indices("test")) == list(range(24))
    assert [len(groups[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    train = torch.cat([cache.clip_frames(i) for i in dm.clip_indices("train")]).double()
    torch.testing.assert_close(dm.stats["mean"], train.mean(0).float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dm.stats["std"], train.std(0, unbiased=False).clamp_min(1e-3).float(),
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(dm.stats["mean"], cache.frames.double().mean(0).float(), rtol=1e-3, atol=1e-3)
    assert dm.labels == ["drum", "guitar", "piano", "violin"] and dm.cache.text.shape[1] == 384


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
    with pytest.raises(ValueError, match="max_file_seconds"):
        MuseDataModule(FolderSource(str(grouped_root)), cache_dir="x", max_file_seconds=0)
    # a run folder written before the window became the length rule still loads
    old = MuseDataModule(FolderSource(str(grouped_root)), cache_dir="x", features={**CFG.to_dict(), "min_frames": 8})
    assert old.feature_config == CFG


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


# -- clip length: the model's window, long recordings, damaged caches ---------------------------------

def folder_datamodule(root: Path, cache_dir: Path, encoder, **kwargs) -> MuseDataModule:
    args = dict(context_frames=32, segment_frames=16, window_stride=8, batch_size=4, num_workers=1, seed=0)
    return MuseDataModule(FolderSource(str(root)), cache_dir=str(cache_dir), text_encoder=encoder,
                          **{**args, **kwargs})


def test_clips_shorter_than_a_window_are_skipped_and_named(tmp_path: Path, encoder, caplog) -> None:
    for i in range(4):
        tone(tmp_path / "audio" / f"loop_{i}.wav", 200 + 50 * i, seconds=1.0)
    tone(tmp_path / "audio" / "tick.wav", 0, seconds=0.2, timbre="drum")  # 9 frames < segment_frames=16
    dm = folder_datamodule(tmp_path / "audio", tmp_path / "cache", encoder, val_fraction=0.25, test_fraction=0.25)
    with caplog.at_level("WARNING", logger="musegen.data.datamodule"):
        dm.setup("fit")
    tick = dm.cache.paths.index(str(tmp_path / "audio" / "tick.wav"))
    assert int(dm.cache.lengths[tick]) == 9 and dm.skipped == [tick]
    assert [len(x) for x in window_index(dm.cache.lengths, [tick], 16, 8)] == [0, 0]  # no window, no error
    used = sorted(i for s in ("train", "val", "test") for i in dm.clip_indices(s))
    assert used == sorted(set(range(5)) - {tick})
    assert all(len(dm.datasets[s]) > 0 for s in ("train", "val", "test"))
    line = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "tick.wav (0.209 s)" in line and "segment_frames=16" in line and "1 of 5 clips" in line
    # a model with a shorter window uses the tick, from the same cache
    small = folder_datamodule(tmp_path / "audio", tmp_path / "cache", encoder, context_frames=8, segment_frames=8)
    small.setup("fit")
    assert small.cache.path == dm.cache.path and small.skipped == []


def test_every_clip_shorter_than_a_window_is_one_clear_error(tmp_path: Path, encoder) -> None:
    for i, seconds in enumerate((0.1, 0.2, 0.3)):
        tone(tmp_path / "hits" / f"hit_{i}.wav", 0, seconds=seconds, timbre="drum", seed=i)
    dm = folder_datamodule(tmp_path / "hits", tmp_path / "cache", encoder)
    with pytest.raises(TooShortError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(tmp_path / "hits") in msg and "every one of the 3 clips" in msg
    assert "longest has 13 frames (0.302 s)" in msg and "segment_frames=16 frames (0.372 s)" in msg
    assert isinstance(err.value, ValueError) and isinstance(err.value, C.CacheError)


@pytest.fixture(scope="module")
def long_root(tmp_path_factory) -> Path:
    """Three 3-minute recordings: a sine melody, a chord and noise bursts."""
    root = tmp_path_factory.mktemp("long")
    tone(root / "melody.wav", 330, seconds=180.0)
    tone(root / "chord.wav", 220, seconds=180.0, timbre="saw")
    tone(root / "noise.wav", 0, seconds=180.0, timbre="drum")
    return root


def test_long_recordings_are_split_into_clips_grouped_by_file(long_root: Path, tmp_path: Path, encoder) -> None:
    dm = folder_datamodule(long_root, tmp_path / "cache", encoder, max_clip_seconds=30.0, val_fraction=0.34,
                           test_fraction=0.33)
    dm.setup("fit")
    cache = dm.cache
    assert len(cache) == 18 and dm.skipped == []
    for name in ("melody", "chord", "noise"):
        ids = [i for i, g in enumerate(cache.groups) if g == name]
        assert [cache.starts[i] for i in ids] == [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]
        assert all(int(cache.lengths[i]) == 1292 for i in ids)  # 30 s at 22050 Hz, hop 512, centred
        sides = [s for s in ("train", "val", "test") if set(ids) & set(dm.clip_indices(s))]
        assert len(sides) == 1 and set(ids) <= set(dm.clip_indices(sides[0]))  # one recording, one side
    report = json.loads((cache.path / "report.json").read_text())
    assert report["clips"] == 18 and report["seconds"] == {"total": 540.0, "used": 540.0}
    # capping each file reads only its start; the report says how much of the audio was used
    capped = folder_datamodule(long_root, tmp_path / "cache", encoder, max_clip_seconds=30.0, max_file_seconds=45.0)
    capped.setup("fit")
    assert len(capped.cache) == 6 and capped.cache.starts == [0.0, 30.0] * 3
    assert capped.cache.report["seconds"] == {"total": 540.0, "used": 135.0}


def test_a_damaged_cache_is_discarded_and_rebuilt(grouped_root: Path, tmp_path: Path, encoder, caplog) -> None:
    dm = folder_datamodule(grouped_root, tmp_path, encoder)
    dm.setup("fit")
    path, frames = dm.cache.path, dm.cache.frames.clone()
    marker = json.loads((path / C.MARKER).read_text())
    assert set(marker["files"]) == {"frames.pt", "text.pt", "meta.json", "report.json"}
    assert marker["files"]["frames.pt"]["size"] == (path / "frames.pt").stat().st_size
    blob = (path / "frames.pt").read_bytes()
    (path / "frames.pt").write_bytes(blob[: len(blob) // 2])  # truncated, as by a full disk or a broken copy
    with pytest.raises(C.CacheDamaged, match="frames.pt is damaged"):
        C.load_cache(path)
    again = folder_datamodule(grouped_root, tmp_path, encoder)
    with caplog.at_level("WARNING", logger="musegen.data.cache"):
        again.prepare_data()  # the marker is there: prepare_data trusts it, the load checks it
        again.setup("fit")
    assert [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()] == [
        f"cache: {path / 'frames.pt'} is damaged (size {len(blob) // 2}, expected {len(blob)}; sha256 differs); "
        "discarding it and rebuilding"]
    assert again.cache.path == path and torch.equal(again.cache.frames, frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert len(again.datasets["train"]) == len(dm.datasets["train"]) > 0
