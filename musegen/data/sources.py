"""Data sources that turn a dataset on disk into a list of Clips.

A source only lists files and their text; it never reads audio. Whether a file is usable is
decided by the cache build, which skips and reports bad files, so one broken file never stops a
run and a missing file is reported in the same place as a corrupt one.
"""
from __future__ import annotations

import csv
import logging
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from musegen.data.clips import Clip

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".aac",
    ".aif", ".aiff", ".aifc", ".au", ".snd", ".wma", ".caf", ".webm",
})
MIDI_EXTENSIONS = (".mid", ".midi")

KAGGLE_DATASET = "soumendraprasad/musical-instruments-sound-dataset"
# split -> (metadata CSV, audio folders to try, the first being the dataset's real layout)
KAGGLE_SPLITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": ("Metadata_Train.csv", ("Train_submission/Train_submission", "Train_submission")),
    "test": ("Metadata_Test.csv", ("Test_submission/Test_submission", "Test_submission")),
}
# Class column -> label. The test CSV really spells guitar "Sound_Guiatr".
KAGGLE_CLASSES = {
    "sound_guitar": "guitar", "sound_guiatr": "guitar", "sound_drum": "drum",
    "sound_violin": "violin", "sound_piano": "piano",
}
# A few natural phrasings, so the text encoder sees more than one string per class.
CAPTION_TEMPLATES = (
    "{x}", "a {x} recording", "the sound of a {x}", "solo {x}", "a short {x} sample", "{x} playing",
)


class DataSourceError(RuntimeError):
    """A dataset that cannot be found or read as a whole; the message says what to change."""


def caption_for(noun: str, key: str) -> str:
    """One of CAPTION_TEMPLATES for `noun`, picked deterministically from `key` (e.g. the file name)."""
    template = CAPTION_TEMPLATES[zlib.crc32(key.encode("utf-8")) % len(CAPTION_TEMPLATES)]
    return template.format(x=noun)


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV with whitespace-stripped keys and values; fails naming missing columns."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [(name or "").strip() for name in (reader.fieldnames or [])]
            missing = [c for c in required if c not in fields]
            if missing:
                raise DataSourceError(f"{path}: missing column(s) {missing}; found {fields}, need {list(required)}")
            return [
                {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataSourceError(f"{path}: cannot read CSV ({e})") from e


class KaggleSource:
    """The Musical Instruments Sound Dataset (guitar, drum, violin, piano) from Kaggle.

    `root` is a local copy of the dataset; None downloads it with kagglehub (cached by kagglehub).
    Each recording is its own group, so one file never lands on both sides of a split.
    """

    def __init__(self, dataset: str = KAGGLE_DATASET, root: str | None = None,
                 splits: Iterable[str] = ("train", "test")) -> None:
        self.dataset = dataset
        self.root = root
        self.splits = list(splits)
        unknown = [s for s in self.splits if s not in KAGGLE_SPLITS]
        if unknown or not self.splits:
            raise ValueError(f"KaggleSource: splits={self.splits!r} must be a non-empty subset of "
                             f"{list(KAGGLE_SPLITS)}")

    def __repr__(self) -> str:
        return f"KaggleSource(dataset={self.dataset!r}, root={self.root!r}, splits={self.splits!r})"

    def resolve_root(self) -> Path:
        """The local dataset folder: `root` when given, else kagglehub's download (one clear error offline)."""
        if self.root is not None:
            root = Path(self.root).expanduser()
            if not root.is_dir():
                raise DataSourceError(f"KaggleSource: root {root} is not a directory; "
                                      f"set data.source.root=/path/to/local/copy of {self.dataset}")
            return root
        try:
            import kagglehub  # noqa: PLC0415 - imports its network client stack: only for a download

            return Path(kagglehub.dataset_download(self.dataset))
        except Exception as e:  # noqa: BLE001 - kagglehub raises requests/HTTP/auth errors of many kinds
            raise DataSourceError(
                f"could not download Kaggle dataset {self.dataset!r} ({type(e).__name__}: {e}). "
                "Without network access, download it elsewhere (kaggle.com/datasets/"
                f"{self.dataset}), copy it here and point at it with data.source.root=/path/to/local/copy "
                "(the folder holding Metadata_Train.csv and Train_submission/)."
            ) from e

    def clips(self) -> list[Clip]:
        """Every row of the selected metadata CSVs as a Clip; listed-but-missing files are kept."""
        root = self.resolve_root()
        clips: list[Clip] = []
        for split in self.splits:
            clips.extend(self._split_clips(root, split))
        log.info("KaggleSource: %d clips from %s (%s)", len(clips), root, ", ".join(self.splits))
        return clips

    def _split_clips(self, root: Path, split: str) -> list[Clip]:
        csv_name, audio_dirs = KAGGLE_SPLITS[split]
        csv_path = _find_file(root, csv_name)
        if csv_path is None:
            raise DataSourceError(f"KaggleSource: no {csv_name} under {root}; is data.source.root the dataset "
                                  f"folder? (or drop {split!r} from data.source.splits)")
        audio_dir = next((csv_path.parent / d for d in audio_dirs if (csv_path.parent / d).is_dir()), None)
        if audio_dir is None:
            raise DataSourceError(f"KaggleSource: no audio folder {audio_dirs[0]} beside {csv_path}")
        clips = []
        unknown: set[str] = set()
        for row in _read_csv(csv_path, ("FileName", "Class")):
            name, cls = row["FileName"], row["Class"]
            if not name:
                continue
            label = KAGGLE_CLASSES.get(cls.lower())
            if label is None:
                unknown.add(cls)
                label = re.sub(r"^sound_", "", cls.lower()) or "unknown"
            path = audio_dir / name
            clips.append(Clip(path=str(path), caption=caption_for(label, name), label=label,
                              group=f"{split}/{name}"))
        if unknown:
            log.warning("KaggleSource: unknown classes in %s kept as labels: %s", csv_path.name, sorted(unknown))
        return clips


def _find_file(root: Path, name: str) -> Path | None:
    """root/name, else the shallowest match below root (downloads sometimes add a folder level)."""
    if (root / name).is_file():
        return root / name
    matches = sorted(root.rglob(name), key=lambda p: (len(p.parts), str(p)))
    return matches[0] if matches else None


def caption_from_name(relative: Path) -> str:
    """A caption from folder and file names that reads like text.

    'loop_amen.flac' -> 'loop amen', 'jazz/sax_solo_01.wav' -> 'jazz sax solo',
    'rock/electricGuitar-2.flac' -> 'rock electric guitar', 'bd_808.flac' -> 'bd 808',
    'TR909kick.wav' -> 'tr 909 kick'. Words split at separators, camelCase and letter/digit
    boundaries; a file name's trailing take or index number (one or two digits, or a leading zero:
    '_01', '-2', 'ke1') is dropped, other numbers are kept; repeated words are said once.
    """
    words: list[str] = []
    for part, is_file in [*((p, False) for p in relative.parent.parts), (relative.stem, True)]:
        part = re.sub(r"([a-z])([A-Z])", r"\1 \2", part)          # camelCase -> camel Case
        part = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", part)    # HTTPServer -> HTTP Server
        part = re.sub(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])", " ", part)  # piano2 -> piano 2
        tokens = [w for w in re.split(r"[\W_]+", part.lower()) if w]
        if is_file and len(tokens) > 1 and _is_index(tokens[-1]):
            tokens = tokens[:-1]
        words += [w for w in tokens if w not in words]
    return " ".join(words) or relative.stem


def _is_index(word: str) -> bool:
    """A take or index number at the end of a file name: '1', '03', '007'; not '808' or '2024'."""
    return word.isdigit() and (len(word) <= 2 or word.startswith("0"))


class FolderSource:
    """Any folder of audio files (recursive), with an optional CSV of captions.

    metadata.csv columns: file (relative to root), caption, and optionally label, group, midi.
    Files not in the CSV get a caption from their folder and file names, label = parent folder,
    group = the file (relative path without suffix). A sibling .mid/.midi is used as ground truth.
    """

    def __init__(self, root: str, metadata: str | None = "metadata.csv") -> None:
        self.root = root
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"FolderSource(root={self.root!r}, metadata={self.metadata!r})"

    def clips(self) -> list[Clip]:
        """Clips for every audio file under root plus every row of the metadata CSV."""
        root = Path(self.root).expanduser().resolve()
        if not root.is_dir():
            raise DataSourceError(f"FolderSource: root {root} does not exist or is not a directory "
                                  "(set data.source.root=/path/to/audio)")
        rows = self._metadata_rows(root)
        files = {p.relative_to(root).as_posix(): p for p in audio_files(root)}
        names = list(files) + [f for f in rows if f not in files]
        if not names:
            raise DataSourceError(f"FolderSource: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under {root}")
        clips = [self._clip(root, name, rows.get(name, {})) for name in sorted(names)]
        log.info("FolderSource: %d clips under %s (%d described by metadata)", len(clips), root,
                 sum(n in rows for n in names))
        return clips

    def _metadata_rows(self, root: Path) -> dict[str, dict[str, str]]:
        if not self.metadata:
            return {}
        path = Path(self.metadata).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            log.info("FolderSource: no %s; captions come from file names", path)
            return {}
        rows = {}
        for row in _read_csv(path, ("file", "caption")):
            if row["file"]:
                rows[Path(row["file"]).as_posix()] = row
        return rows

    def _clip(self, root: Path, name: str, row: dict[str, str]) -> Clip:
        rel = Path(name)
        path = root / rel
        midi = str(root / row["midi"]) if row.get("midi") else _sibling_midi(path)
        label = row.get("label") or (rel.parent.name if rel.parent != Path(".") else root.name)
        return Clip(path=str(path), caption=row.get("caption") or caption_from_name(rel), label=label,
                    group=row.get("group") or rel.with_suffix("").as_posix(), midi=midi or None)


def audio_files(root: Path) -> list[Path]:
    """Audio files below root by extension, skipping hidden files and folders (e.g. macOS ._ files)."""
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _sibling_midi(path: Path) -> str | None:
    for ext in MIDI_EXTENSIONS:
        candidate = path.with_suffix(ext)
        if candidate.is_file():
            return str(candidate)
    return None
