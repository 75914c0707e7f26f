"""Loudness-normalised output: written files at export.loudness_lufs under the export.peak_db true-peak ceiling."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from musegen.apps.generate import generate_files
from musegen.export import ExportSettings, master
from musegen.loudness import normalize_loudness, true_peak_db

SR = 22050
TOLERANCE_LU = 0.5
#: one 16-bit step, the most that writing a WAV may add to a peak
PCM_DB = 0.01


def export_cfg(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("generate", overrides=["ckpt=x.ckpt", *overrides])


@pytest.fixture(scope="module")
def settings() -> ExportSettings:
    """The export defaults with loudness normalisation to the streaming level switched on."""
    return replace(instantiate(export_cfg().export), loudness_lufs=-14.0)


def loudness(y: np.ndarray, sr: int = SR) -> float:
    return float(pyloudnorm.Meter(sr).integrated_loudness(np.asarray(y, dtype=np.float64)))


def plucked(seconds: float = 3.0, clicks: bool = False) -> np.ndarray:
    """Decaying harmonic notes, twice a second; with `clicks`, a sharp spike on each attack, so the peak
    sits far above the loudness (a peak-to-loudness ratio no plain gain can bring to -14 LUFS at -1 dBTP)."""
    t = np.arange(int(seconds * SR)) / SR
    phase = t % 0.5
    f0 = 220.0 * 2 ** (np.floor(t * 2) % 5 / 12)
    y = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 6)) * np.exp(-6 * phase) * 0.3
    if clicks:
        y[(np.arange(len(t)) % (SR // 2)) == 0] = 0.99
    return y.astype(np.float32)


def test_generated_wav_mp3_and_rendition_reach_the_target_under_the_ceiling(tmp_path: Path, smoke_run) -> None:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[f"ckpt={smoke_run['ckpt']}", f"out={tmp_path}", "duration=1.0",
                                             "prompt='calm piano melody'", "device=cpu", "export.loudness_lufs=-14"])
    written = generate_files(cfg)[0]
    sidecar = json.loads(Path(written["json"]).read_text())
    target, ceiling = cfg.export.loudness_lufs, cfg.export.peak_db
    # the ceiling comes first: where the encoder's overshoot would pass it, the lossy file is encoded
    # quieter by the trim the sidecar records (-0.55 dB for this sample's MP3)
    trims = sidecar["loudness"]["lossy_trim_db"]
    for kind in ("wav", "mp3", "midi.wav"):
        y, sr = sf.read(written[kind], dtype="float64")
        assert abs(loudness(y, sr) - (target + trims.get(kind, 0.0))) <= TOLERANCE_LU, kind
        assert true_peak_db(y, sr) <= ceiling + PCM_DB, kind
    report = sidecar["loudness"]["audio"]
    assert report["target_lufs"] == target and not report["limited"] and report["reason"] is None
    assert report["before_lufs"] < target - 1                 # peak normalisation alone left it quieter
    assert abs(report["after_lufs"] - loudness(sf.read(written["wav"])[0], sr)) < 0.05
    assert sidecar["loudness"]["midi.wav"]["after_lufs"] == pytest.approx(target, abs=TOLERANCE_LU)


def test_plain_gain_when_the_headroom_allows(settings: ExportSettings) -> None:
    y = plucked()
    out, report = normalize_loudness(y, SR, -20.0, settings.peak_db, settings.max_limiting_db)
    assert loudness(out) == pytest.approx(-20.0, abs=0.05)
    assert report.limiting_db == 0 and not report.limited
    gain = float(np.dot(out, y) / np.dot(y, y))               # one gain for every sample: the waveform kept
    assert np.allclose(out, gain * y, atol=1e-6)
    assert 20 * np.log10(gain) == pytest.approx(report.gain_db, abs=1e-3)


def test_peaky_audio_is_limited_to_the_target_under_the_ceiling(settings: ExportSettings) -> None:
    y = plucked(clicks=True)
    headroom = settings.peak_db - true_peak_db(y, SR)
    assert loudness(y) + headroom < settings.loudness_lufs - 3  # plain gain would stop 3 LU short
    out, report = normalize_loudness(y, SR, settings.loudness_lufs, settings.peak_db, settings.max_limiting_db)
    assert loudness(out) == pytest.approx(settings.loudness_lufs, abs=TOLERANCE_LU)
    assert true_peak_db(out, SR) <= settings.peak_db + 1e-6
    assert 0 < report.limiting_db <= settings.max_limiting_db and not report.limited


def test_without_limiting_the_gain_stops_at_the_ceiling_and_says_so(settings: ExportSettings) -> None:
    y = plucked(clicks=True)
    out, report = normalize_loudness(y, SR, settings.loudness_lufs, settings.peak_db, max_limiting_db=0.0)
    assert true_peak_db(out, SR) == pytest.approx(settings.peak_db, abs=0.01)
    assert report.limited and "true-peak ceiling" in report.reason
    assert report.after_lufs < settings.loudness_lufs - TOLERANCE_LU
    assert report.before_lufs == pytest.approx(loudness(y), abs=1e-6)
    assert report.after_lufs == pytest.approx(loudness(out), abs=1e-3)


@pytest.mark.parametrize("y, reason", [(np.zeros(SR, np.float32), "silent"),
                                       (plucked(0.3), "shorter than the 0.4 s")])
def test_silence_and_short_clips_stay_as_they_are(settings: ExportSettings, y: np.ndarray, reason: str) -> None:
    out, report = master(y, SR, settings)
    expected, _ = master(y, SR, replace(settings, loudness_lufs=None))
    assert np.array_equal(out, expected)
    assert reason in report["reason"] and not report["limited"] and report["gain_db"] == 0


def test_null_loudness_is_peak_normalisation_only(settings: ExportSettings) -> None:
    out, report = master(plucked(), SR, replace(settings, loudness_lufs=None))
    assert report is None
    assert 20 * np.log10(np.abs(out).max()) == pytest.approx(settings.peak_db, abs=1e-4)


@pytest.mark.parametrize("override, name", [("export.loudness_lufs=3", "export.loudness_lufs"),
                                            ("export.max_limiting_db=-1", "export.max_limiting_db"),
                                            ("export.peak_db=0.5", "export.peak_db")])
def test_bad_settings_fail_naming_them(override: str, name: str) -> None:
    with pytest.raises(Exception, match=name):
        instantiate(export_cfg(override).export)


def test_without_loudness_normalisation_the_mp3_is_encoded_once(tmp_path: Path, smoke_run) -> None:
    """Peak normalisation (the default) promises sample peaks only: the MP3 is not read back and encoded
    again to keep its decoded true peak under the ceiling (that costs about 0.7 s per 30 s file)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[f"ckpt={smoke_run['ckpt']}", f"out={tmp_path}", "duration=1.0",
                                             "prompt='calm piano melody'", "device=cpu"])
    assert cfg.export.loudness_lufs is None
    written = generate_files(cfg)[0]
    sidecar = json.loads(Path(written["json"]).read_text())
    assert sidecar["loudness"] == {"audio": None, "midi.wav": None, "lossy_trim_db": {}}
    wav, mp3 = (sf.read(written[kind], dtype="float32")[0] for kind in ("wav", "mp3"))
    assert 20 * np.log10(np.abs(wav).max()) == pytest.approx(cfg.export.peak_db, abs=PCM_DB)
    assert 20 * np.log10(np.abs(mp3).max()) > cfg.export.peak_db - 0.5  # at the WAV's level, not turned down
