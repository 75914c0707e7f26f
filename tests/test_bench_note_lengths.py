"""bench/bench_note_lengths.py on the smoke checkpoint: one JSON line with the three sets measured the
same way, and one line naming a bad input."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import run_script


def test_bench_note_lengths_measures_real_generated_and_continued_notes(tmp_path, smoke_run):
    # no --cache: the one the checkpoint's run folder names
    out = run_script("bench/bench_note_lengths.py", "--ckpt", str(smoke_run["ckpt"]), "--prompts", "2",
                     "--seconds", "4", "--continuations", "2", "--every", "4", cwd=tmp_path)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    figures = result["figures"]
    assert result["what"] == "note_lengths" and result["settings"]["continuations"] == 2
    assert Path(result["settings"]["cache"]).parent == smoke_run["root"] / "data" / "cache"   # the one it read
    # the real clips are the demo's rendered scores: they have notes, quartiles in order, a share in [0, 1]
    real = figures["real_clips"]
    assert real["notes"] > 0 and real["q25"] <= real["median"] <= real["q75"] and 0 <= real["short_share"] <= 1
    assert real["spread_log2_within_window"] is None or real["spread_log2_within_window"] >= 0
    # 4 s from each of 2 prompts are one 4 s window each; the two continued clips give theirs
    assert figures["generated"]["windows"] == 2 and figures["continuations"]["windows"] == 2
    positions = figures["note_starts_by_segment_position_over_mean"]
    # over the mean (rounded to 0.01): they average 1, or all are 0 when no note was transcribed
    assert len(positions) > 1 and (sum(positions) == 0 or abs(sum(positions) / len(positions) - 1) < 0.01)
    assert list(tmp_path.iterdir()) == []   # a benchmark prints; it writes nothing


def test_bench_note_lengths_names_a_bad_cache(tmp_path, smoke_run):
    out = run_script("bench/bench_note_lengths.py", "--ckpt", str(smoke_run["ckpt"]), "--cache", "no-such-cache",
                     check=False, cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.startswith("bench_note_lengths: ")]
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-4000:]
    assert "--cache no-such-cache is not a complete feature cache" in lines[0]


def test_bench_note_lengths_without_a_run_folder_asks_for_the_cache(tmp_path, smoke_run):
    ckpt = tmp_path / "alone.ckpt"
    ckpt.write_bytes(smoke_run["ckpt"].read_bytes())
    out = run_script("bench/bench_note_lengths.py", "--ckpt", str(ckpt), check=False, cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.startswith("bench_note_lengths: ")]
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-4000:]
    assert "no run folder beside it" in lines[0] and "pass --cache" in lines[0]
