"""The Python API: a checkpoint in, music out.

    import musegen
    model = musegen.load("outputs/demo/make-demo/checkpoints/last.ckpt")
    music = model.generate(["calm piano melody", "fast violin tune"], duration=10, seed=0)
    music.waveforms, music.sample_rate     # float32 [items, samples], Hz
    music.save("out/")                     # WAV/MP3/MIDI/JSON as generate.py writes them

Several prompts are generated in one batched rollout; each item's audio is what a call with that
prompt alone gives (musegen.generation.Generator). The synthesis and export settings default to
generate.py's (conf/generate.yaml and the groups it composes), so the API and the command write the
same files.
"""
from __future__ import annotations

import base64
import html
import importlib.metadata
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from musegen.checkpoint import file_sha256
from musegen.export import ExportSettings, Renderer, check_vocoder_given, render, slug, write_sample
from musegen.features import FeatureConfig
from musegen.generation import Generator, ProgressFn
from musegen.vocoder.checkpoint import load_vocoder

#: Where the default synthesis and export settings come from: generate.py's own config.
_CONFIG_MODULE, _CONFIG_NAME = "musegen.conf", "generate"


@dataclass
class Music:
    """Generated music: one mono waveform per item, with the frames it was rendered from."""

    waveforms: np.ndarray                      # float32 [items, samples], mastered as written
    sample_rate: int
    prompts: list[str | None]                  # one per item
    frames: np.ndarray                         # [items, T, 32] feature frames
    metadata: list[dict[str, Any]]             # per item: what its JSON sidecar records
    features: FeatureConfig
    export: ExportSettings
    loudness: list[dict[str, Any] | None] = field(default_factory=list)   # per item, with loudness_lufs

    def __len__(self) -> int:
        return len(self.waveforms)

    def save(self, out: str | Path) -> list[dict[str, str]]:
        """Write every item's files under `out` (WAV/MP3, MIDI and its rendition, JSON sidecar), named
        after its prompt and seed and never over an existing file; returns {kind: path} per item."""
        written = []
        for i, (y, prompt, meta) in enumerate(zip(self.waveforms, self.prompts, self.metadata)):
            base = f"{slug(prompt or meta.get('lyrics') or 'unconditional')}-s{meta['seed']}"
            loudness = self.loudness[i] if self.loudness else None
            written.append(write_sample(y, loudness, self.frames[i], self.features, out, base, prompt, self.export,
                                        meta))
        return written

    def _repr_html_(self) -> str:
        """One audio player per item, with its prompt: how Jupyter shows a Music."""
        rows = []
        for y, prompt, meta in zip(self.waveforms, self.prompts, self.metadata):
            buffer = io.BytesIO()
            sf.write(buffer, y, self.sample_rate, format="WAV", subtype="PCM_16")
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
            label = html.escape(f"{prompt or 'unconditional'} (seed {meta['seed']})")
            rows.append(f"<div><div>{label}</div>"
                        f'<audio controls src="data:audio/wav;base64,{data}"></audio></div>')
        return "\n".join(rows)


class MusicModel:
    """A loaded checkpoint with its audio path: ``generate`` returns finished audio. Build it with
    ``musegen.load``."""

    def __init__(self, generator: Generator, renderer: Renderer, export: ExportSettings,
                 sources: Mapping[str, Any]) -> None:
        self.generator, self.renderer, self.export = generator, renderer, export
        self.sources = dict(sources)          # checkpoint and vocoder paths and hashes, for the sidecars

    @property
    def sample_rate(self) -> int:
        return self.generator.features.sample_rate

    def generate(
        self, prompts: str | Sequence[str | None] | None = None, duration: float = 10.0, *,
        lyrics: str | Sequence[str | None] | None = None, audio: str | Path | Sequence[str | Path | None] | None = None,
        guidance: float | None = None, temperature: float | None = None, top_k: int | None = None,
        top_p: float | None = None, min_p: float | None = None, pitch_temperature: float | None = None,
        min_note_frames: int | None = None, seed: int | Sequence[int] = 0, num_samples: int = 1,
        progress: bool | ProgressFn = True,
    ) -> Music:
        """Music for one prompt or a list of prompts, all in one batched rollout.

        ``lyrics``, ``audio`` (a reference file to continue) and ``seed`` are one value for every
        prompt or a list with one per prompt; each prompt gets ``num_samples`` variations (its seed,
        seed + 1, ...); sampling settings left None take the checkpoint's defaults for its head;
        ``progress`` is a bar (True) or a function called with (segments done, segments in all).
        Same arguments, same samples.
        """
        result = self.generator.generate(prompt=prompts, lyrics=lyrics, audio=audio, duration=duration,
                                         guidance=guidance, temperature=temperature, top_k=top_k, top_p=top_p,
                                         min_p=min_p, pitch_temperature=pitch_temperature,
                                         min_note_frames=min_note_frames, seed=seed,
                                         num_samples=num_samples, progress=progress)
        start = time.perf_counter()
        rendered = render(result.frames, result.features, self.renderer, self.export, duration,
                          [item["prompt"] for item in result.items])
        shared = {**result.metadata, "render_seconds": time.perf_counter() - start, **self.sources,
                  "versions": _versions()}
        return Music(
            waveforms=np.stack([y for y, _ in rendered]).astype(np.float32), sample_rate=self.sample_rate,
            prompts=[item["prompt"] for item in result.items], frames=result.frames,
            metadata=[{**shared, **item, "sample": i} for i, item in enumerate(result.items)],
            features=result.features, export=self.export, loudness=[report for _, report in rendered],
        )


def load(checkpoint: str | Path, device: str = "auto", vocoder: str | Path | None = None, threads: int | None = 1,
         synth: Mapping[str, Any] | None = None, export: Mapping[str, Any] | None = None,
         max_duration: float = 600.0) -> MusicModel:
    """A musegen checkpoint ready to generate audio.

    ``vocoder``: a vocoder checkpoint (train.py experiment=vocoder_demo) renders the audio; without one
    the analytic synthesis of ``synth`` does. ``synth`` and ``export`` are configs like conf/synth and
    conf/export (``_target_`` included); None takes generate.py's defaults. ``threads``: torch CPU
    threads while rolling out (None leaves torch's setting; see musegen.runtime.torch_threads).
    """
    if synth is None or export is None:
        defaults = _generate_config()
        synth = defaults.synth if synth is None else synth
        export = defaults.export if export is None else export
    generator = Generator.from_checkpoint(checkpoint, device=device, max_duration=max_duration, threads=threads)
    settings: ExportSettings = instantiate(export)
    sources: dict[str, Any] = {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
                               "vocoder": None}
    check_vocoder_given(settings.synthesis, vocoder)
    if vocoder is None:
        return MusicModel(generator, instantiate(synth)(generator.features), settings, sources)
    voc = load_vocoder(vocoder, generator.features)
    sources["vocoder"] = {"path": str(vocoder), "sha256": file_sha256(vocoder)}
    return MusicModel(generator, voc, replace(settings, synthesis="vocoder"), sources)


def _generate_config() -> DictConfig:
    """conf/generate.yaml composed as generate.py composes it, inside or outside a running Hydra app."""
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=_CONFIG_NAME)
    else:
        with initialize_config_module(config_module=_CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=_CONFIG_NAME)
    return OmegaConf.create({"synth": cfg.synth, "export": cfg.export})


def _versions() -> dict[str, str]:
    return {p: importlib.metadata.version(p)
            for p in ("musegen", "torch", "lightning", "librosa", "music21", "transformers")}
