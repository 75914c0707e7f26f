"""Rebuild audio files from their own features: `python -m musegen.resynth vocoder=PATH in=FILE_OR_FOLDER out=FOLDER`.

Each input is read, its frames extracted (musegen.features), and rendered back to audio by a trained
vocoder checkpoint or, with vocoder=mix|mfcc|harmonic, by musegen.audio.Synthesizer; the result is
written as <out>/<stem>.wav (sub-folders of a folder input kept). A file that cannot be used is
skipped with its reason; report.json in <out> lists what was written and what was skipped.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from musegen.apps.errors import user_errors
from musegen.audio import MODES, finalize, write_audio
from musegen.cli import CONFIG_PATH
from musegen.data.datamodule import feature_config
from musegen.data.sources import AUDIO_EXTENSIONS, audio_files
from musegen.features import AudioError, FeatureConfig, extract_file
from musegen.io import write_json

log = logging.getLogger("resynth")


def renderer(vocoder: str, cfg: DictConfig) -> tuple[Callable[[np.ndarray], np.ndarray], FeatureConfig]:
    """(frames -> audio, the feature settings it expects) for a checkpoint path or an analytic mode."""
    if vocoder in MODES:
        features = feature_config(dict(cfg.features))
        synth = instantiate(cfg.synth)(features)
        return (lambda frames: synth.render(frames, mode=vocoder)), features
    from musegen.vocoder import load_vocoder  # noqa: PLC0415 - torch network only when asked for

    model = load_vocoder(vocoder)
    return model.render, model.features


def inputs(path: Path) -> list[tuple[Path, Path]]:
    """(audio file, output stem relative to out) for ``in``: a file, or every audio file below a folder
    (its sub-folders kept, so equal stems in two sub-folders do not overwrite each other)."""
    if path.is_file():
        return [(path, Path(path.stem))]
    if path.is_dir():
        files = audio_files(path)
        if not files:
            raise ValueError(f"in={path}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
        return [(f, f.relative_to(path).with_suffix("")) for f in files]
    raise ValueError(f"in={path}: no such file or folder")


def resynthesize(cfg: DictConfig) -> dict[str, list]:
    """Write every input's rebuilt audio under cfg.out; returns (and writes) the report."""
    render, features = renderer(str(cfg.vocoder), cfg)
    out = Path(cfg.out)
    report: dict[str, list] = {"written": [], "skipped": []}
    for path, stem in tqdm(inputs(Path(cfg["in"])), desc="resynthesising", unit="file"):
        try:
            frames = extract_file(path, features)
        except AudioError as err:
            log.warning("skipped %s", err)
            report["skipped"].append({"path": str(path), "reason": str(err)})
            continue
        y = finalize(render(frames), features.sample_rate, peak_db=cfg.peak_db)
        written = write_audio(y, out / stem, features.sample_rate, formats=("wav",))[0]
        report["written"].append({"path": str(path), "out": str(written)})
    write_json(out / "report.json", {"vocoder": str(cfg.vocoder), **report})
    log.info("resynth: %d written, %d skipped (see %s)", len(report["written"]), len(report["skipped"]),
             out / "report.json")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="resynth")
def main(cfg: DictConfig) -> None:
    with user_errors("resynth"):
        resynthesize(cfg)


if __name__ == "__main__":
    main()
