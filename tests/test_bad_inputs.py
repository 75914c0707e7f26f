"""A user's mistakes, as a user makes them: train.py and generate.py run in subprocesses with bad data,
bad arguments, unavailable models, bad checkpoints and outputs that cannot be written. Each must end
with exit status 2 and one line on stderr naming the input and what is wrong, print no traceback, and
leave nothing behind that looks like a result. Most cases fail before any training or generation.
Last, the awkward but valid: README's examples of quoting prompts and paths reach generate.py intact.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, run_script


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _refused(script: str, root: Path, message: str, *overrides: str, env: dict[str, str] | None = None) -> set[str]:
    """Run `script` with `overrides` under paths.root_dir=root, check that it fails as a user error
    whose one line matches `message`; return what it added under root."""
    before = _files(root)
    out = run_script(script, *overrides, f"paths.root_dir={root}", check=False, env=env)
    shown = out.stdout + out.stderr
    assert out.returncode == 2, f"exit {out.returncode}:\n{shown[-4000:]}"
    assert "Traceback" not in shown, shown[-4000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"{script}: ")]
    assert len(lines) == 1, out.stderr[-4000:]
    assert re.search(message, lines[0]), lines[0]
    assert "weights_only=False" not in shown and "will likely succeed" not in shown
    return _files(root) - before


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small folder of bad data sets: empty/, broken/ (a noise file and an empty file named .wav)
    and badcsv/ (a metadata.csv with the wrong columns)."""
    root = tmp_path_factory.mktemp("bad-data")
    (root / "empty").mkdir()
    for name in ("broken", "badcsv"):
        (root / name).mkdir()
        (root / name / "noise.wav").write_bytes(bytes(range(256)) * 8)
    (root / "broken" / "empty.wav").write_bytes(b"")
    (root / "badcsv" / "metadata.csv").write_text("name,text\nnoise.wav,a noise\n")
    return root


@pytest.fixture(scope="module")
def tampered(smoke_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke checkpoint with an object whose unpickling would call a function (here `print`)."""
    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    ckpt = torch.load(smoke_run["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["payload"] = Payload()
    path = tmp_path_factory.mktemp("tampered") / "tampered.ckpt"
    torch.save(ckpt, path)
    return path


# -- train.py -------------------------------------------------------------------------------------
TRAIN = ("debug=smoke", "data=folder")


@pytest.mark.parametrize("case, message", [
    ("missing", r"data\.source\.root is required: give it on the command line as data\.source\.root="),
    ("nonexistent", r"root \S+/nonexistent does not exist or is not a directory"),
    ("empty", r"no audio files .* under \S+/empty$"),
    ("badcsv", r"badcsv/metadata\.csv: missing column\(s\) \['file', 'caption'\]; found \['name', 'text'\]"),
])
def test_train_refuses_a_data_folder_it_cannot_use(data, tmp_path, case, message):
    root = [] if case == "missing" else [f"data.source.root={data / case}"]
    assert _refused("train.py", tmp_path, message, *TRAIN, *root) == set()


def test_train_on_only_broken_files_names_the_report_and_leaves_no_run(data, tmp_path):
    added = _refused("train.py", tmp_path, r"no usable audio among 2 clips .*reasons in \S+\.report\.json",
                     *TRAIN, f"data.source.root={data / 'broken'}")
    reports = [name for name in added if name.endswith(".report.json")]
    assert len(reports) == 1 and all(reports[0].startswith(name) for name in added), added  # no run folder


def test_train_on_clips_all_shorter_than_one_window_says_so_and_leaves_no_run(tmp_path):
    folder = tmp_path / "one-shots"
    folder.mkdir()
    t = np.arange(int(0.2 * 22050)) / 22050
    for i, hz in enumerate((220.0, 330.0, 440.0)):  # 0.2 s each: 9 frames, the demo model's window is 16
        sf.write(folder / f"hit_{i}.wav", (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 22050)
    added = _refused("train.py", tmp_path, r"every one of the 3 clips .* is shorter than one training",
                     "experiment=demo", "data=folder", f"data.source.root={folder}")
    assert not any(name.startswith("outputs") for name in added), added  # no run folder


def test_train_with_an_unavailable_text_model_offline_says_how_to_provide_it(data, tmp_path):
    assert _refused("train.py", tmp_path, r"Text model 'distilgpt2' is not available: .*HF_HUB_OFFLINE",
                    *TRAIN, f"data.source.root={data / 'badcsv'}", "text=hf", "text.model=distilgpt2") == set()


def test_train_refuses_a_random_bytes_init_from_before_building_anything(data, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(bytes(range(256)) * 16)
    assert _refused("train.py", tmp_path, rf"checkpoint {junk}: unreadable, not a PyTorch checkpoint archive",
                    *TRAIN, f"data.source.root={data / 'badcsv'}", f"init_from={junk}") == set()


def test_train_refuses_a_tampered_last_ckpt_and_marks_the_run_failed(data, tmp_path, tampered):
    run = tmp_path / "outputs" / "smoke" / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    shutil.copy(tampered, last)
    added = _refused("train.py", tmp_path, rf"checkpoint {last}: refused, it holds Python objects other than "
                     r"tensors and plain data \(print\), which would run code", *TRAIN,
                     f"data.source.root={data / 'badcsv'}", "run_name=run", "resume=auto")
    # the run keeps its checkpoint, marked failed; Hydra's own config and log are all that is new
    assert "outputs/smoke/run/FAILED" in added
    hydra_files = ("outputs/smoke/run/.hydra", "outputs/smoke/run/smoke.log")
    assert all(n == "outputs/smoke/run/FAILED" or n.startswith(hydra_files) for n in added), added
    assert "refused" in (run / "FAILED").read_text()
    assert last.read_bytes() == tampered.read_bytes()


# -- generate.py ----------------------------------------------------------------------------------
def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "text.ckpt").write_text("epoch: 3\nweights: none\n")
    (folder / "random.ckpt").write_bytes(bytes((i * 7919) % 256 for i in range(4096)))
    (folder / "a_folder.ckpt").mkdir()
    (folder / "a_file").write_text("not a folder")
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.parametrize("name, message", [
    ("empty.ckpt", "unreadable, empty file"),
    ("text.ckpt", "unreadable, not a PyTorch checkpoint archive"),
    ("random.ckpt", "unreadable, not a PyTorch checkpoint archive"),
    ("a_folder.ckpt", "is a directory, not a checkpoint file"),
])
def test_generate_says_what_is_wrong_with_a_checkpoint(tmp_path, name, message):
    bad = _bad_files(tmp_path / "in")[name]
    assert _refused("generate.py", tmp_path, rf"checkpoint {bad}: {message}", f"ckpt={bad}",
                    f"out={tmp_path / 'out'}") == set()


def test_generate_refuses_a_tampered_checkpoint_without_suggesting_to_trust_it(tmp_path, tampered):
    assert _refused("generate.py", tmp_path, rf"checkpoint {tampered}: refused, .*would run code",
                    f"ckpt={tampered}", f"out={tmp_path / 'out'}") == set()


def test_generate_names_what_a_checkpoint_of_another_version_has_that_this_one_lacks(tmp_path, smoke_run):
    """Head settings this musegen does not know used to end in Hydra's wrapped TypeError and a traceback."""
    ckpt = torch.load(smoke_run["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["head"]["colour"] = 1
    other = tmp_path / "other-version.ckpt"
    torch.save(ckpt, other)
    assert _refused("generate.py", tmp_path, rf"checkpoint {other}: model\.head: \S+ has no setting colour; "
                    r"its settings are ", f"ckpt={other}", f"out={tmp_path / 'out'}") == set()


def test_train_names_a_head_setting_that_does_not_exist(tmp_path):
    assert _refused("train.py", tmp_path, r"model\.head: \S+ has no setting colour", "experiment=smoke",
                    "+model.head.colour=1", "run_name=typo") == set()


@pytest.mark.parametrize("override, message", [
    ("duration=abc", r"duration='abc': must be a number"),
    ("guidance=abc", r"guidance='abc': must be a number or null"),
    ("temperature=abc", r"temperature='abc': must be a number or null"),
    ("min_p=abc", r"min_p='abc': must be a number or null"),
    ("pitch_temperature=abc", r"pitch_temperature='abc': must be a number or null"),
    ("min_note_frames=2.5", r"min_note_frames=2\.5: must be an integer or null"),
    ("num_samples=abc", r"num_samples='abc': must be an integer"),
    ("seed=abc", r"seed='abc': must be an integer"),
    ("seed=1.5", r"seed=1\.5: must be an integer"),
    ("out=/sys/musegen-out", r"out=/sys/musegen-out: cannot write in /sys"),
])
def test_generate_checks_its_arguments_before_any_work(tmp_path, smoke_run, override, message):
    assert _refused("generate.py", tmp_path, message, f"ckpt={smoke_run['ckpt']}", "duration=1",
                    f"out={tmp_path / 'out'}", override) == set()


@pytest.mark.parametrize("override, message", [
    ("settings.min_p=abc", r"settings\.min_p='abc': must be a number or null"),
    ("settings.top_k=0.5", r"settings\.top_k=0\.5: must be an integer or null"),
    # the sizes used to fail in a comparison, naming neither the setting nor what it must be
    ("settings.fad_samples=many", r"settings\.fad_samples='many': must be an integer$"),
    ("settings.seconds=abc", r"settings\.seconds='abc': must be a number$"),
    ("settings.max_labels=1.5", r"settings\.max_labels=1\.5: must be an integer or null"),
])
def test_evaluate_names_a_mistyped_setting(tmp_path, smoke_run, override, message):
    assert _refused("evaluate.py", tmp_path, message, f"ckpt={smoke_run['ckpt']}",
                    f"hydra.run.dir={tmp_path / 'eval'}", override) == set()


def test_evaluate_refuses_a_generator_checkpoint_as_its_vocoder(tmp_path, smoke_run):
    assert _refused("evaluate.py", tmp_path, r"not a musegen vocoder checkpoint", f"ckpt={smoke_run['ckpt']}",
                    f"vocoder={smoke_run['ckpt']}", f"hydra.run.dir={tmp_path / 'eval'}") == set()


def test_generate_refuses_a_file_as_out_and_a_folder_as_audio(tmp_path, smoke_run):
    bad = _bad_files(tmp_path / "in")
    assert _refused("generate.py", tmp_path, rf"out={bad['a_file']}: {bad['a_file']} is a file, not a folder",
                    f"ckpt={smoke_run['ckpt']}", f"out={bad['a_file']}") == set()
    assert _refused("generate.py", tmp_path, rf"audio={bad['a_folder.ckpt']}: is a directory, not an audio file",
                    f"ckpt={smoke_run['ckpt']}", f"audio={bad['a_folder.ckpt']}", f"out={tmp_path / 'out'}") == set()


def test_generate_without_a_checkpoint_asks_for_one(tmp_path):
    assert _refused("generate.py", tmp_path, r"ckpt is required: give it on the command line as ckpt=") == set()


def test_full_hydra_error_shows_the_traceback(tmp_path):
    out = run_script("generate.py", f"ckpt={tmp_path / 'nope.ckpt'}", f"paths.root_dir={tmp_path}", check=False,
                     env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr and "nope.ckpt: no such file" in out.stderr
    assert _files(tmp_path) == set()


# -- awkward but valid: README's quoting examples ---------------------------------------------------
def _readme_quoting_examples() -> list[list[str]]:
    """The command lines of README's "Spaces, quotes and other characters" block, as the shell splits them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("**Spaces, quotes and other characters.**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.startswith(".venv/bin/python generate.py")]


#: (ckpt, prompt, out) each README example must give generate.py, in order
QUOTED = [
    ("my runs/last.ckpt", "calm piano melody", "my samples"),
    ("runs/last.ckpt", "it's late: a slow, quiet piano", "takes/lr=0.1"),
    ("modèles/last.ckpt", "chanson d’été au piano", "sorties/été"),
]


@pytest.mark.parametrize("index", range(len(QUOTED)))
def test_readme_quoting_examples_reach_generate_intact(tmp_path, smoke_run, index):
    examples = _readme_quoting_examples()
    assert len(examples) == len(QUOTED)
    ckpt, prompt, out = QUOTED[index]
    (tmp_path / ckpt).parent.mkdir(parents=True)
    shutil.copy(smoke_run["ckpt"], tmp_path / ckpt)
    run_script("generate.py", *examples[index][2:], "duration=1", cwd=tmp_path)
    sidecars = list((tmp_path / out).glob("*.json"))
    assert len(sidecars) == 1, _files(tmp_path)
    written = json.loads(sidecars[0].read_text(encoding="utf-8"))
    assert (written["checkpoint"], written["prompt"]) == (ckpt, prompt)
    assert {name.split("/")[0] for name in _files(tmp_path)} == {Path(ckpt).parts[0], Path(out).parts[0]}


@pytest.mark.parametrize("args, message", [
    (["--sampling", "{min_p: 0.006}"], r"--sampling '\{min_p: 0\.006\}' is not JSON"),
    (["--sampling", "[0.006]"], r"--sampling '\[0\.006\]' must be a JSON object"),
    (["--cache", "no-such-cache"], r"--cache no-such-cache is not a complete feature cache"),
    (["--ckpt", "no-such.ckpt"], r"checkpoint no-such\.ckpt: no such file"),
])
def test_bench_hazard_names_a_bad_input(tmp_path, smoke_run, args, message):
    cache = next((smoke_run["root"] / "data" / "cache").iterdir())
    given = {"--ckpt": str(smoke_run["ckpt"]), "--cache": str(cache)}
    given.update(zip(args[::2], args[1::2]))
    out = run_script("bench/bench_hazard.py", *(x for pair in given.items() for x in pair), check=False,
                     cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-4000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("bench_hazard: ")]
    assert len(lines) == 1 and re.search(message, lines[0]), out.stderr[-4000:]
    assert list(tmp_path.iterdir()) == []


def test_bench_generation_without_processes_reports_the_warm_calls(tmp_path, smoke_run):
    out = run_script("bench/bench_generation.py", "--ckpt", str(smoke_run["ckpt"]), "--duration", "1",
                     "--repeats", "1", "--pairs", "0", cwd=tmp_path)
    figures = json.loads(out.stdout.strip().splitlines()[-1])["figures"]
    assert figures["rtf_median"] > 0 and "cli_process_rtf" not in figures
    bad = run_script("bench/bench_generation.py", "--pairs", "-1", check=False, cwd=tmp_path)
    assert bad.returncode == 2 and "--pairs must be >= 0, got -1" in bad.stderr and "Traceback" not in bad.stderr


def test_fine_tuning_names_the_weights_a_checkpoint_lacks_for_the_runs_model(tmp_path, smoke_run):
    """A run whose model config differs from its init_from checkpoint's (here: without the token head's
    envelope) used to end in load_state_dict's RuntimeError and a traceback."""
    _refused("train.py", tmp_path, rf"init_from {smoke_run['ckpt']}: its weights do not fit the model this run's "
             r"config builds \(it has unknown head\.envelope\).*model settings it was trained with",
             "experiment=smoke", "callbacks=none", "test=false", "trainer.max_epochs=1",
             f"init_from={smoke_run['ckpt']}", "model.head.envelope_frames=0")
