"""musegen.audio against real librosa: inverse-MFCC parity, pitched rendering, finishing, files."""
from __future__ import annotations

import shutil

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from musegen.audio import Synthesizer, finalize, write_audio
from musegen.features import FeatureConfig, extract

CFG = FeatureConfig()
SR, HOP = CFG.sample_rate, CFG.hop_length
MELODY = [60, 62, 64, 65, 67, 69, 71, 72]  # C major scale, 0.25 s each


def harmonic_melody(pitches: list[int], note_s: float = 0.25, n_harmonics: int = 6) -> np.ndarray:
    """A plucked-string-like melody: 1/h partials with an exponential decay per note."""
    n = int(note_s * SR)
    t = np.arange(n) / SR
    out = []
    for p in pitches:
        f0 = 440.0 * 2 ** ((p - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, n_harmonics + 1) if f0 * h < SR / 2)
        out.append(tone * np.exp(-t * 6.0) * np.minimum(1.0, t / 0.005))
    y = np.concatenate(out).astype(np.float32)
    return 0.5 * y / np.abs(y).max()


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    y = harmonic_melody(MELODY)
    return y, extract(y, CFG)


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer(CFG)


@pytest.fixture(scope="module")
def plain(clip, synth) -> np.ndarray:
    """Our inverse MFCC of the clip, shared by the tests that need it."""
    return synth.mfcc_to_audio(clip[1][:, : CFG.n_mfcc])


def spectral_convergence(ref: np.ndarray, y: np.ndarray) -> float:
    """||S - g Y|| / ||S|| on STFT magnitudes, g the least-squares gain (level does not count)."""
    n = min(len(ref), len(y))
    S = np.abs(librosa.stft(ref[:n], n_fft=CFG.n_fft, hop_length=HOP))
    Y = np.abs(librosa.stft(y[:n], n_fft=CFG.n_fft, hop_length=HOP))
    g = (S * Y).sum() / max((Y * Y).sum(), 1e-12)
    return float(np.linalg.norm(S - g * Y) / np.linalg.norm(S))


def log_mel_distance(ref: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute dB difference of mel spectrograms (80 dB floor below the reference's peak)."""
    n = min(len(ref), len(y))
    ref_db = librosa.power_to_db(librosa.feature.melspectrogram(y=ref[:n], sr=SR, n_fft=CFG.n_fft, hop_length=HOP))
    y_db = librosa.power_to_db(librosa.feature.melspectrogram(y=y[:n], sr=SR, n_fft=CFG.n_fft, hop_length=HOP))
    y_db += np.median(ref_db - y_db)  # level-free, like the gain above
    floor = ref_db.max() - 80.0
    return float(np.mean(np.abs(np.maximum(ref_db, floor) - np.maximum(y_db, floor))))


def pitch_fidelity(frames: np.ndarray, y: np.ndarray) -> float:
    """Fraction of voiced frames whose chroma argmax survives the round trip through audio."""
    again = extract(y, CFG)
    n = min(len(frames), len(again))
    energy = frames[:n, 0]
    voiced = energy > energy.max() - 0.5 * np.ptp(energy)
    return float(np.mean(frames[:n, CFG.n_mfcc:].argmax(1)[voiced] == again[:n, CFG.n_mfcc:].argmax(1)[voiced]))


def test_inverse_mfcc_matches_librosa_quality(clip, synth, plain):
    y, frames = clip
    mfcc = frames[:, : CFG.n_mfcc]
    ours = plain
    theirs = librosa.feature.inverse.mfcc_to_audio(
        mfcc.T, n_mels=CFG.n_mels, sr=SR, n_fft=CFG.n_fft, hop_length=HOP, n_iter=synth.n_iter
    )
    sc_ours, sc_lib = spectral_convergence(y, ours), spectral_convergence(y, theirs)
    lmd_ours, lmd_lib = log_mel_distance(y, ours), log_mel_distance(y, theirs)
    assert sc_ours <= 1.05 * sc_lib, (sc_ours, sc_lib)
    assert lmd_ours <= 1.05 * lmd_lib, (lmd_ours, lmd_lib)
    assert ours.dtype == np.float32 and np.all(np.isfinite(ours))


def test_length_is_frames_times_hop_and_batches_match(clip):
    _, frames = clip
    synth = Synthesizer(CFG, n_iter=4)  # shapes and batching do not depend on the iteration count
    mfcc = frames[:40, : CFG.n_mfcc]
    single = synth.mfcc_to_audio(mfcc)
    assert single.shape == (40 * HOP,)
    batch = synth.mfcc_to_audio(np.stack([mfcc, mfcc * 0.9]))
    assert batch.shape == (2, 40 * HOP)
    np.testing.assert_allclose(batch[0], single, atol=1e-4)
    np.testing.assert_allclose(synth.mfcc_to_audio(torch.from_numpy(mfcc)), single, atol=1e-6)  # tensor in, same out


def test_flush_denormal_and_threads_are_restored(clip):
    tiny = torch.full((64,), 1e-30)
    threads = torch.get_num_threads()
    Synthesizer(CFG, n_iter=2, threads=1).mfcc_to_audio(clip[1][:8, : CFG.n_mfcc])
    assert (tiny * 1e-10)[0].item() > 0.0  # denormal results are no longer flushed to zero
    assert torch.get_num_threads() == threads


def test_harmonic_rendering_keeps_pitch_classes(clip, synth, plain):
    _, frames = clip
    harmonic = synth.render(frames, mode="harmonic", register=66)
    mixed = synth.render(frames, mode="mix", register=66)
    assert harmonic.shape == mixed.shape == plain.shape == (len(frames) * HOP,)
    assert pitch_fidelity(frames, harmonic) >= 0.85  # measured 0.91 (mix 0.95, mfcc 0.59)
    assert pitch_fidelity(frames, mixed) >= 0.85
    assert pitch_fidelity(frames, mixed) > pitch_fidelity(frames, plain)
    batched = synth.render(np.stack([frames, frames]), mode="harmonic", register=66)
    np.testing.assert_allclose(batched[1], harmonic, atol=1e-4)


def test_bad_frames_fail_fast(synth):
    with pytest.raises(ValueError, match="frames"):
        synth.render(np.zeros((10, 20), dtype=np.float32))
    with pytest.raises(ValueError, match="mode"):
        synth.render(np.zeros((10, 32), dtype=np.float32), mode="loud")
    with pytest.raises(ValueError, match="NaN"):
        synth.mfcc_to_audio(np.full((10, 20), np.nan, dtype=np.float32))


def test_finalize_normalises_without_clipping_or_nan():
    rng = np.random.default_rng(0)
    loud = finalize(rng.standard_normal(SR).astype(np.float32) * 10, SR, peak_db=-1.0)
    assert np.abs(loud).max() == pytest.approx(10 ** (-1 / 20), rel=1e-4)
    assert loud[0] == 0.0 and abs(loud[-1]) < 1e-3  # faded in and out
    silent = finalize(np.zeros(SR, dtype=np.float32), SR)
    assert not np.any(silent) and silent.dtype == np.float32
    broken = finalize(np.full(1000, np.nan, dtype=np.float32), SR)
    assert np.all(np.isfinite(broken)) and not np.any(broken)
    quiet = finalize(0.01 * rng.standard_normal((2, SR)), SR, target_rms_db=-20.0)
    assert np.all(np.abs(quiet).max(axis=1) <= 10 ** (-1 / 20) + 1e-6)


def test_write_audio_wav_and_mp3(tmp_path):
    y = finalize(harmonic_melody([60, 64, 67, 72]), SR)
    paths = write_audio(y, tmp_path / "melody", SR)
    assert [p.name for p in paths] == ["melody.wav", "melody.mp3"]
    wav, sr = sf.read(paths[0])
    assert sr == SR and len(wav) == len(y) and sf.info(paths[0]).subtype == "PCM_16"
    mp3, sr = sf.read(paths[1])
    assert sr == SR and abs(len(mp3) / sr - len(y) / SR) < 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["melody.mp3", "melody.wav"]  # no temp files left


@pytest.mark.filterwarnings("ignore:.audioop. is deprecated:DeprecationWarning")
def test_write_audio_other_formats(tmp_path):
    y = finalize(harmonic_melody([60, 67]), SR)
    flac, = write_audio(y, tmp_path / "x", SR, formats=("flac",))
    assert sf.read(flac)[1] == SR
    if shutil.which("ffmpeg"):
        m4a, = write_audio(y, tmp_path / "x", SR, formats=("m4a",))
        assert m4a.stat().st_size > 0
    with pytest.raises(ValueError, match="mono"):
        write_audio(np.zeros((2, 100), dtype=np.float32), tmp_path / "y", SR)


@pytest.mark.parametrize("sr,n_fft,n_mels", [(22050, 2048, 128), (16000, 1024, 80), (44100, 4096, 64), (8000, 256, 20)])
def test_mel_filterbank_and_band_frequencies_are_librosas(sr, n_fft, n_mels):
    from musegen.dsp import mel_filterbank, mel_frequencies

    np.testing.assert_allclose(mel_frequencies(n_mels, sr / 2), librosa.mel_frequencies(n_mels=n_mels, fmax=sr / 2),
                               rtol=1e-12)
    ours = mel_filterbank(sr, n_fft, n_mels)
    assert ours.shape == (n_mels, 1 + n_fft // 2)
    np.testing.assert_allclose(ours, librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels), atol=1e-7)
