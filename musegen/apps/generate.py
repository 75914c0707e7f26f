"""generate.py's work: checkpoint + prompt -> WAV, MP3, MIDI, the MIDI's rendition and a JSON sidecar."""
from __future__ import annotations

import importlib.metadata
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from musegen.checkpoint import file_sha256
from musegen.export import ExportSettings, Renderer, export_sample, slug
from musegen.features import AudioError, FeatureConfig
from musegen.generation import Generator
from musegen.lyrics import write_lyrics
from musegen.vocoder.checkpoint import load_vocoder

#: generate.py's scalar arguments: (type, whether null is allowed). Hydra reads `duration=abc` as a
#: string and `prompt=1985` as an int, so each is checked (or, for text, converted) before any work.
ARGUMENTS: dict[str, tuple[type, bool]] = {
    "prompt": (str, True), "lyrics": (str, True), "lyrics_from_prompt": (bool, False),
    "lyrics_model": (str, False), "lyrics_max_new_tokens": (int, False), "duration": (float, False),
    "max_duration": (float, False), "guidance": (float, True), "temperature": (float, True),
    "top_k": (int, True), "top_p": (float, True), "seed": (int, False), "num_samples": (int, False),
    "device": (str, False), "threads": (int, True),
}
_KINDS = {str: "text", bool: "true or false", int: "an integer", float: "a number"}


def arguments(cfg: DictConfig) -> dict[str, Any]:
    """Every argument of generate.py, typed and checked, before anything is loaded or generated: a
    wrong value fails at once with its name, an output folder that cannot be written before the
    work that would be lost."""
    args = {name: typed(name, cfg[name], kind, nullable) for name, (kind, nullable) in ARGUMENTS.items()}
    args["ckpt"] = Path(typed("ckpt", cfg.ckpt, str, False))
    audio = typed("audio", cfg.audio, str, True)
    args["audio"] = None if audio is None else audio_file(Path(audio))
    args["out"] = writable_folder("out", Path(typed("out", cfg.out, str, False)))
    vocoder = typed("vocoder", cfg.vocoder, str, True)
    args["vocoder"] = None if vocoder is None else Path(vocoder)
    if args["vocoder"] is None and cfg.export.synthesis == "vocoder":
        raise ValueError("export.synthesis=vocoder needs vocoder=PATH (a checkpoint from experiment=vocoder_demo)")
    return args


def renderer(args: dict[str, Any], cfg: DictConfig, features: FeatureConfig) -> tuple[Renderer, ExportSettings]:
    """The audio path of this call: the vocoder when one is given (export.synthesis becomes vocoder), else
    the analytic synthesis of conf/synth."""
    settings = instantiate(cfg.export)
    if args["vocoder"] is None:
        return instantiate(cfg.synth)(features), settings
    vocoder = load_vocoder(args["vocoder"])
    if vocoder.features != features:
        raise ValueError(f"vocoder={args['vocoder']}: built for other features than the checkpoint's "
                         f"({vocoder.features} vs {features})")
    return vocoder, replace(settings, synthesis="vocoder")


def typed(name: str, value: Any, kind: type, nullable: bool) -> Any:
    """`value` as `kind`, or a ValueError naming the argument; ints are numbers, any scalar is text."""
    if value is None and nullable:
        return None
    ok = {str: isinstance(value, (str, int, float, bool)), bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
    if not ok:
        raise ValueError(f"{name}={value!r}: must be {_KINDS[kind]}" + (" or null" if nullable else ""))
    return kind(value)


def audio_file(path: Path) -> Path:
    """`path`, when it is a file (whether it holds usable audio is found when it is read)."""
    if path.is_dir():
        raise AudioError(f"audio={path}: is a directory, not an audio file")
    if not path.is_file():
        raise AudioError(f"audio={path}: no such file")
    return path


def writable_folder(name: str, path: Path) -> Path:
    """`path`, when it is (or can be made) a folder this process can write in. Checked by making and
    removing a temporary folder in its nearest existing ancestor: permission bits say nothing for
    root, read-only mounts or /sys."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{name}={path}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as err:
        raise PermissionError(f"{name}={path}: cannot write in {existing} ({err.strerror})") from None
    return path


def generate_files(cfg: DictConfig) -> list[dict[str, str]]:
    """Check the arguments, load and generate before writing anything; then write each sample's files."""
    args = arguments(cfg)
    start = time.perf_counter()
    gen = Generator.from_checkpoint(args["ckpt"], device=args["device"], max_duration=args["max_duration"],
                                    threads=args["threads"])
    loaded = time.perf_counter()
    prompt, lyrics = args["prompt"], args["lyrics"]
    if args["lyrics_from_prompt"]:
        lyrics = write_lyrics(prompt or "", model=args["lyrics_model"],
                              max_new_tokens=args["lyrics_max_new_tokens"], seed=args["seed"])
    result = gen.generate(prompt=prompt, lyrics=lyrics, audio=args["audio"], duration=args["duration"],
                          guidance=args["guidance"], temperature=args["temperature"], top_k=args["top_k"],
                          top_p=args["top_p"], seed=args["seed"], num_samples=args["num_samples"], progress=True)
    synth, settings = renderer(args, cfg, result.features)
    meta = {**result.metadata, "checkpoint": str(args["ckpt"]), "checkpoint_sha256": file_sha256(args["ckpt"]),
            "load_seconds": loaded - start, "versions": _versions(),
            "vocoder": None if args["vocoder"] is None else {"path": str(args["vocoder"]),
                                                            "sha256": file_sha256(args["vocoder"])}}
    written = []
    for i, frames in enumerate(result.frames):
        base = f"{slug(prompt or lyrics or 'unconditional')}-s{args['seed']}"
        base += f"-{i}" if args["num_samples"] > 1 else ""
        written.append(export_sample(frames, result.features, args["out"], base, prompt, synth, settings,
                                     args["duration"], {**meta, "sample": i}))
    return written


def _versions() -> dict[str, Any]:
    return {p: importlib.metadata.version(p)
            for p in ("musegen", "torch", "lightning", "librosa", "music21", "transformers")}
