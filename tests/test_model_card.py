"""The model card beside every run's checkpoints (musegen.model_card), its evaluations, and the config tree."""
from __future__ import annotations

import json
import shutil

from musegen.checkpoint import file_sha256, load_model
from musegen.model_card import CARD_FILE, FACTS_FILE, record_evaluation, write_training_card
from musegen.model_card_markdown import fmt, render


def _facts(folder):
    return json.loads((folder / FACTS_FILE).read_text())


def test_training_writes_a_model_card_beside_its_checkpoints(smoke_run):
    folder = smoke_run["ckpt"].parent
    card, facts = (folder / CARD_FILE).read_text(), _facts(folder)
    assert card == render(facts)  # the card is its facts file rendered, whatever order JSON keeps keys in
    # the data: experiment=smoke is 12 demo clips of 2 s, every one used, split by piece
    data = facts["data"]
    assert data["clips"] == 12 and sum(s["clips"] for s in data["splits"].values()) == 12
    assert 23 < data["seconds"] < 25
    assert f"12 clips ({data['seconds']:,.1f} s" in card
    assert f"`DemoSource` at `{smoke_run['root'] / 'data' / 'demo'}`" in card
    for split, size in data["splits"].items():
        assert f"| {split} | {size['clips']} | {size['frames']:,} |" in card
    # the model: its real size, head, backbone (debug=smoke's) and window, and the text encoder
    parameters = sum(p.numel() for p in load_model(smoke_run["ckpt"]).parameters())
    assert f"{parameters:,} parameters" in card
    assert "TokenHead (codebook_size 512" in card and "(dropout 0.3, fusion film, hidden 16, layers 1)" in card
    assert "16 frames (0.37 s) of context, predicts 8 frames (0.19 s)" in card
    assert "**Text encoder:** `minilm:all-MiniLM-L6-v2` (384-d" in card
    # how it was trained, and where it ended
    assert "2 epochs of at most 2" in card and "1 torch thread," in card
    assert "`python train.py experiment=smoke" in card
    assert f"| skill | {fmt(facts['metrics']['val/skill'])} | {fmt(facts['metrics']['test/skill'])} |" in card
    assert "## Limitations" in card and "20 MFCC + 12 chroma" in card and "Not for:" in card


def test_a_card_before_evaluation_says_how_to_evaluate(smoke_run):
    folder = smoke_run["ckpt"].parent
    facts = {**_facts(folder), "evaluations": {}}  # as training wrote it, whatever evaluate.py added since
    best = facts["checkpoints"]["best"]["file"]
    assert f"Not evaluated yet: run `python evaluate.py ckpt={folder.resolve() / best}`" in render(facts)


def test_retraining_keeps_only_the_evaluations_of_unchanged_checkpoints(smoke_run, tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(smoke_run["ckpt"].parent, folder)
    best = next(p for p in folder.glob("epoch_*.ckpt"))
    for ckpt, skill in ((folder / "last.ckpt", 0.25), (best, 0.5)):
        record_evaluation(ckpt, {"checkpoint_sha256": file_sha256(ckpt), "metrics": [
            {"name": "skill", "value": skill, "baselines": [["ridge", 0.125], ["persistence", 0.0]], "chance": None,
             "target": ">= 0.5"}]})
    card = (folder / CARD_FILE).read_text()
    assert "| skill | 0.250 | ridge 0.125<br>persistence 0.000 |  | >= 0.5 |" in card and "| skill | 0.500 |" in card
    with (folder / "last.ckpt").open("ab") as f:  # a resumed run rewrote last.ckpt
        f.write(b"\0")
    write_training_card(folder, _facts(folder))
    assert set(_facts(folder)["evaluations"]) == {best.name}
    assert "| skill | 0.250 |" not in (folder / CARD_FILE).read_text()


def test_an_evaluation_of_a_checkpoint_without_a_card_writes_nothing(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read")
    assert record_evaluation(ckpt, {"metrics": []}) is None
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_the_run_folder_keeps_the_resolved_config_tree(smoke_run):
    tree = (smoke_run["run"] / "config_tree.log").read_text()
    assert "_target_: musegen.module.MuseModule" in tree and f"root_dir: {smoke_run['root']}" in tree
    assert "${" not in tree and "\x1b[" not in tree  # resolved, plain text
    branches = [line[4:] for line in tree.splitlines() if line.startswith(("├── ", "└── "))]
    assert branches[:4] == ["data", "model", "text", "trainer"] and "seed" in branches
