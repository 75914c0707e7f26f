"""`train.py debug=smoke` is a quick whole run on any data source, not only the demo set."""
import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_script

INSTRUMENT_CLASS = {"piano": "Sound_Piano", "violin": "Sound_Violin", "guitar": "Sound_Guitar"}


@pytest.fixture(scope="module")
def demo_clips(smoke_run) -> list[tuple[Path, str]]:
    """(wav, instrument) of the smoke run's rendered demo clips: real FluidSynth recordings."""
    clips = []
    for meta in sorted((smoke_run["root"] / "data" / "demo").rglob("clip_*.json")):
        info = json.loads(meta.read_text())
        clips.append((meta.with_suffix(".wav"), str(info["label"])))
    assert len(clips) >= 6, clips
    return clips


def _finished(root: Path) -> Path:
    runs = list((root / "outputs" / "smoke").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_debug_smoke_trains_on_a_folder(tmp_path, demo_clips):
    folder = tmp_path / "audio"
    for i, (wav, instrument) in enumerate(demo_clips):
        (folder / instrument).mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, folder / instrument / f"take_{i:02d}.wav")
    run_script("train.py", "debug=smoke", "data=folder", f"data.source.root={folder}", f"paths.root_dir={tmp_path}",
               "run_name=folder")
    run = _finished(tmp_path)
    assert (run / "checkpoints" / "last.ckpt").is_file() and list((run / "samples").glob("epoch_*/*.wav"))


def test_debug_smoke_trains_on_the_kaggle_layout(tmp_path, demo_clips):
    root = tmp_path / "kaggle"
    for split, csv_name, audio in (("train", "Metadata_Train.csv", "Train_submission/Train_submission"),
                                   ("test", "Metadata_Test.csv", "Test_submission/Test_submission")):
        (root / audio).mkdir(parents=True)
        rows = []
        for i, (wav, instrument) in enumerate(demo_clips):
            if (i % 3 == 0) == (split == "test"):
                name = f"{split}_{i:02d}.wav"
                shutil.copy(wav, root / audio / name)
                rows.append({"FileName": name, "Class": INSTRUMENT_CLASS.get(instrument, "Sound_Piano")})
        with (root / csv_name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["FileName", "Class"])
            writer.writeheader()
            writer.writerows(rows)
    run_script("train.py", "debug=smoke", "data=kaggle", f"data.source.root={root}", f"paths.root_dir={tmp_path}",
               "run_name=kaggle")
    run = _finished(tmp_path)
    assert (run / "checkpoints" / "last.ckpt").is_file()
