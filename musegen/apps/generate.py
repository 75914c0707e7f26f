"""generate.py's work: checkpoint + prompt -> WAV, MP3, MIDI, the MIDI's rendition and a JSON sidecar."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from musegen.api import load
from musegen.export import check_vocoder_given
from musegen.features import AudioError
from musegen.lyrics import write_lyrics

#: The sampling settings (null: the checkpoint's default), as generate.py and evaluate.py take them.
SAMPLING_ARGUMENTS: dict[str, tuple[type, bool]] = {
    "guidance": (float, True), "temperature": (float, True), "top_k": (int, True), "top_p": (float, True),
    "min_p": (float, True), "pitch_temperature": (float, True), "min_note_frames": (int, True),
}
#: generate.py's scalar arguments: (type, whether null is allowed). Hydra reads `duration=abc` as a
#: string and `prompt=1985` as an int, so each is checked (or, for text, converted) before any work.
ARGUMENTS: dict[str, tuple[type, bool]] = {
    "prompt": (str, True), "lyrics": (str, True), "lyrics_from_prompt": (bool, False),
    "lyrics_model": (str, False), "lyrics_max_new_tokens": (int, False), "duration": (float, False),
    "max_duration": (float, False), **SAMPLING_ARGUMENTS, "seed": (int, False), "num_samples": (int, False),
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
    check_vocoder_given(cfg.export.synthesis, args["vocoder"])
    return args


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
    model = load(args["ckpt"], device=args["device"], vocoder=args["vocoder"], threads=args["threads"],
                 synth=cfg.synth, export=cfg.export, max_duration=args["max_duration"])
    loaded = time.perf_counter()
    prompt, lyrics = args["prompt"], args["lyrics"]
    if args["lyrics_from_prompt"]:
        lyrics = write_lyrics(prompt or "", model=args["lyrics_model"],
                              max_new_tokens=args["lyrics_max_new_tokens"], seed=args["seed"])
    music = model.generate(prompt, args["duration"], lyrics=lyrics, audio=args["audio"], guidance=args["guidance"],
                           temperature=args["temperature"], top_k=args["top_k"], top_p=args["top_p"],
                           min_p=args["min_p"], pitch_temperature=args["pitch_temperature"],
                           min_note_frames=args["min_note_frames"], seed=args["seed"],
                           num_samples=args["num_samples"], progress=True)
    for meta in music.metadata:
        meta["load_seconds"] = loaded - start
    return music.save(args["out"])
