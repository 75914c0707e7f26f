"""Sweeps and scale-out: an Optuna search, a joblib multirun, kill-and-resume, atomic checkpoints, DDP wiring.

Sweeps and resume run train.py in subprocesses as a user would; the checkpoint-writing tests fit in this
process. All share one set of demo clips and one feature cache built once for the module (`paths.data_dir`)
and write into their own `paths.root_dir`. Whole file: about 2.5 minutes on 2 busy cores.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_script

from musegen.checkpoint import CheckpointError, file_sha256, read_checkpoint
from musegen.checkpoint_io import AtomicCheckpointIO

TRAIN = str(ROOT / "train.py")
SMOKE = ["experiment=smoke", "trainer.max_epochs=1"]


def _env() -> dict[str, str]:
    # tests/ on the path for the test-only CrashPoint callback; one thread per process (2 busy cores)
    path = [str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(path)}


def _start(*overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, TRAIN, *overrides], cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke experiment's demo clips and feature cache, built once (in this process) for every test here."""
    from hydra.utils import instantiate

    root = tmp_path_factory.mktemp("sweep-data")
    cfg = _compose("experiment=smoke", f"paths.root_dir={root}")
    datamodule = instantiate(cfg.data, text_encoder=instantiate(cfg.text), _convert_="all")
    datamodule.prepare_data()
    return root / "data"


def _sweep_dir(root: Path) -> Path:
    sweeps = list((root / "outputs" / "smoke" / "multiruns").iterdir())
    assert len(sweeps) == 1, f"expected one sweep folder, got {sweeps}"
    return sweeps[0]


# -- Optuna ---------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")  # optuna 2.10 on SQLAlchemy 1.4
def test_optuna_sweep_writes_summary_and_best_parameters(data_dir, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    run_script("train.py", "-m", "hparams_search=optuna", *SMOKE, "hydra.sweeper.n_trials=2",
               f"hydra.sweeper.storage='{storage}'", f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}")
    sweep = _sweep_dir(tmp_path)
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["metric"] == "val/skill" and summary["direction"] == "maximize"
    trials = summary["trials"]
    assert [t["job"] for t in trials] == [0, 1]
    assert all(t["status"] == "COMPLETED" and math.isfinite(t["value"]) for t in trials)
    assert summary["best"]["value"] == max(t["value"] for t in trials)
    space = {"model.lr", "model.backbone.hidden", "model.backbone.layers", "model.backbone.dropout",
             "model.cond_dropout",
             "model.backbone.fusion", "model.segment_frames"}
    assert {o.split("=")[0] for o in trials[0]["overrides"]} >= space
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == space
    assert results["best_value"] == pytest.approx(summary["best"]["value"])
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    # the configured storage holds the study, so a later sweep with the same storage continues it
    import optuna

    study = optuna.load_study(study_name="musegen", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.best_value == pytest.approx(summary["best"]["value"])


# -- joblib ---------------------------------------------------------------------------------------
def test_joblib_multirun_runs_jobs_in_parallel_under_one_tensorboard_logdir(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_script("train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.backbone.hidden=8,16",
               *SMOKE, "callbacks=none", "test=false", f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}")
    sweep = _sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    summary = json.loads((sweep / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["COMPLETED", "COMPLETED"]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    # `tensorboard --logdir <sweep>` finds both runs, with their hyper-parameters in the hparams view
    mux = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    mux.Reload()
    assert sorted(mux.Runs()) == ["0/tensorboard", "1/tensorboard"]
    hidden = {}
    for run, tags in mux.PluginRunToTagToContent("hparams").items():
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(tags)
        start = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/session_start_info"])
        hidden[run] = start.session_start_info.hparams["model/backbone/hidden"].number_value
        experiment = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/experiment"])
        assert "val/skill" in [m.name.tag for m in experiment.experiment.metric_infos]
        assert "val/skill" in mux.GetAccumulator(run).Tags()["scalars"]
    assert hidden == {"0/tensorboard": 8, "1/tensorboard": 16}


# -- kill and resume ------------------------------------------------------------------------------
SKILL = re.compile(r"val/skill = (\S+)")


def _crash_at(marker: Path, epoch: int, batch: int) -> list[str]:
    """Overrides that park training at (epoch, batch) and write `marker` there (tests/crashpoint.py)."""
    return ["+callbacks.crash._target_=crashpoint.CrashPoint", f"+callbacks.crash.marker={marker}",
            f"+callbacks.crash.epoch={epoch}", f"+callbacks.crash.batch={batch}"]


def _reference_and_killed(common: list[str], marker: Path, epoch: int,
                          batch: int) -> tuple[subprocess.Popen, list[str]]:
    """Start an uninterrupted run named `reference` and a run named `crashed` that is SIGKILLed at
    (epoch, batch); return the reference, still running, and the overrides that resume `crashed`."""
    crash = ["run_name=crashed", *_crash_at(marker, epoch=epoch, batch=batch)]
    reference = _start(*common, "run_name=reference")
    _kill_when_parked(_start(*common, *crash), marker)
    return reference, crash


def _last_checkpoints(root: Path) -> tuple[dict, dict]:
    """last.ckpt of the `crashed` and the `reference` runs under `root`."""
    final, ref = (read_checkpoint(root / "outputs" / "smoke" / name / "checkpoints" / "last.ckpt")
                  for name in ("crashed", "reference"))
    return final, ref


def _kill_when_parked(victim: subprocess.Popen, marker: Path) -> None:
    """SIGKILL `victim` once its CrashPoint has written `marker`."""
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert victim.poll() is None, f"the run to kill ended early:\n{victim.communicate()[0][-4000:]}"
        assert time.monotonic() < deadline, "the run never reached its crash point"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL


def test_killed_run_resumes_to_the_uninterrupted_runs_metrics(data_dir, tmp_path):
    """SIGKILL in the middle of epoch 1 (CrashPoint parks training at batch 10 of 40), start the same
    command again: it resumes from last.ckpt (end of epoch 0) and ends where an uninterrupted run does.

    Tolerance: 1e-6 on val/skill and on every weight. Measured: bit-identical. On CPU with a fixed thread
    count every kernel is deterministic and the resumed run replays the same batches (EpochShuffle) with
    the same random draws (RandomState restores the generators); on GPU nondeterministic kernels (cuDNN GRU
    backward, atomics) would make the two runs differ by float rounding, growing with training length.
    """
    common = ["experiment=smoke", "callbacks=none", "test=false", "trainer.max_epochs=2", "data.batch_size=4",
              "resume=auto", f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}"]
    reference, crash = _reference_and_killed(common, tmp_path / "crashed", epoch=1, batch=10)
    run = tmp_path / "outputs" / "smoke" / "crashed"
    at_kill = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert at_kill["epoch"] == 0  # the kill landed in epoch 1, after epoch 0's checkpoint

    resumed = _finish(_start(*common, *crash))  # the same command again
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in resumed
    assert "restored the random state saved with the checkpoint (epoch 1)" in resumed  # epoch 1, not 0
    ref_out = _finish(reference)

    final, ref = _last_checkpoints(tmp_path)
    assert (final["epoch"], final["global_step"]) == (ref["epoch"], ref["global_step"])
    assert (final["epoch"], final["global_step"]) == (1, 2 * at_kill["global_step"])
    skill_resumed, skill_ref = float(SKILL.findall(resumed)[-1]), float(SKILL.findall(ref_out)[-1])
    assert skill_resumed == pytest.approx(skill_ref, abs=1e-6), (skill_resumed, skill_ref)
    for name, tensor in ref["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][name], tensor, atol=1e-6, rtol=0, msg=name)


def test_run_killed_after_an_epoch_that_did_not_improve_resumes_from_that_epoch(data_dir, tmp_path):
    """last.ckpt is the latest epoch's state whether or not val/loss improved: SIGKILL just after epoch 1
    (at the first batch of epoch 2) of a run whose val/loss cannot improve after epoch 0, and the same
    command resumes from epoch 1, not from the best checkpoint (epoch 0), and ends as an uninterrupted run.

    model.lr=0 makes "does not improve" exact rather than likely: the weights never move, validation is
    deterministic, so every epoch's val/loss equals epoch 0's and the best checkpoint (strictly lower
    val/loss) stays epoch 0's. Training still runs, so the optimiser's moments and step counts, which the
    comparison with the uninterrupted run checks, depend on every batch and dropout mask since the start.
    """
    common = ["experiment=smoke", "callbacks=none", "test=false", "trainer.max_epochs=3", "model.lr=0",
              "resume=auto", f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}"]
    reference, crash = _reference_and_killed(common, tmp_path / "crashed", epoch=2, batch=0)
    checkpoints = tmp_path / "outputs" / "smoke" / "crashed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["epoch_000.ckpt", "last.ckpt"]  # no improvement
    best, at_kill = read_checkpoint(checkpoints / "epoch_000.ckpt"), read_checkpoint(checkpoints / "last.ckpt")
    assert (best["epoch"], at_kill["epoch"]) == (0, 1)
    assert at_kill["global_step"] == 2 * best["global_step"]

    resumed = _finish(_start(*common, *crash))
    assert f"resuming from {checkpoints / 'last.ckpt'}" in resumed
    assert "restored the random state saved with the checkpoint (epoch 2)" in resumed
    ref_out = _finish(reference)

    final, ref = _last_checkpoints(tmp_path)
    assert (final["epoch"], final["global_step"]) == (ref["epoch"], ref["global_step"]) == (2, 3 * best["global_step"])
    assert float(SKILL.findall(resumed)[-1]) == float(SKILL.findall(ref_out)[-1])
    torch.testing.assert_close([s["state"] for s in final["optimizer_states"]],
                               [s["state"] for s in ref["optimizer_states"]], atol=1e-6, rtol=0)
    for name, tensor in ref["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][name], tensor, atol=0, rtol=0, msg=name)


# -- atomic checkpoints ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A tiny run fitted in this process for one epoch: (its composed config, its run folder)."""
    from musegen.apps.train import build

    root = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _compose("experiment=smoke", "callbacks=none", "~logger", "test=false", "trainer.max_epochs=1",
                       f"paths.root_dir={root}", f"paths.data_dir={data_dir}", f"paths.output_dir={root / 'run'}",
                       "+trainer.enable_model_summary=false")
        datamodule, module, trainer = build(cfg)
        trainer.fit(module, datamodule=datamodule)
    finally:
        torch.set_num_threads(threads)
    return cfg, root / "run"


@pytest.fixture
def one_epoch(trained, tmp_path):
    """A private copy of `trained`'s run folder: (config writing into the copy, the copy)."""
    from omegaconf import OmegaConf

    cfg, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = OmegaConf.merge(cfg, {"paths": {"output_dir": str(copy)}})
    return cfg, copy


def _half_written_save(real_save, then):
    """torch.save that writes half of the checkpoint to its file and then dies (`then()`)."""
    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
            f.flush()
        then()
    return save


def _no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


@pytest.mark.filterwarnings("ignore:Checkpoint directory", "ignore:The dirpath has changed")  # a copied run
def test_failed_save_during_training_keeps_the_previous_last_ckpt(one_epoch, monkeypatch):
    from musegen.apps.train import build

    cfg, run = one_epoch
    last = run / "checkpoints" / "last.ckpt"
    before = file_sha256(last)

    def die():
        raise RuntimeError("simulated crash in the middle of writing a checkpoint")

    cfg.trainer.max_epochs = 2
    datamodule, module, trainer = build(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(torch, "save", _half_written_save(torch.save, die))
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last), weights_only=True)
    finally:
        monkeypatch.undo()
        torch.set_num_threads(threads)
    assert file_sha256(last) == before
    assert read_checkpoint(last)["epoch"] == 0
    assert _no_temp_files(last.parent) == []


def test_sigkill_during_save_never_leaves_a_corrupt_last_ckpt(one_epoch):
    _, run = one_epoch
    last = run / "checkpoints" / "last.ckpt"
    before = file_sha256(last)
    checkpoint = read_checkpoint(last)
    checkpoint["epoch"] = 1
    pid = os.fork()
    if pid == 0:  # child: die by SIGKILL half-way through writing the new checkpoint
        try:
            torch.save = _half_written_save(torch.save, lambda: os.kill(os.getpid(), signal.SIGKILL))
            AtomicCheckpointIO().save_checkpoint(checkpoint, last)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert file_sha256(last) == before and read_checkpoint(last)["epoch"] == 0
    # the kill left the half-written temporary file beside the target (same filesystem, so the final
    # rename is atomic), hidden, and named so that nothing takes it for a checkpoint
    leftovers = _no_temp_files(last.parent)
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.") and leftovers[0].endswith(".tmp.ckpt")
    # an unprotected write of the same bytes would have left a truncated last.ckpt
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(last)


def test_atomic_save_writes_a_loadable_checkpoint_with_the_usual_mode(one_epoch):
    _, run = one_epoch
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    target = run / "checkpoints" / "copy.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    assert read_checkpoint(target)["global_step"] == checkpoint["global_step"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


# -- DDP under Hydra ------------------------------------------------------------------------------
def test_ddp_trainer_saves_atomically_and_renders_samples_on_rank_zero_only(data_dir, tmp_path):
    """The 2-process run itself is tests/test_training.py's; here, cheaply, what each rank would do."""
    from types import SimpleNamespace

    from musegen.apps.train import build
    from musegen.callbacks import SampleRenderer

    cfg = _compose("experiment=smoke", "trainer=ddp_cpu", "~logger", f"paths.root_dir={tmp_path}",
                   f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'run'}")
    _, _, trainer = build(cfg)
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # written by global rank 0 only
    renderer = next(c for c in trainer.callbacks if isinstance(c, SampleRenderer))
    for rank_zero in (True, False):
        fake = SimpleNamespace(current_epoch=0, max_epochs=1, sanity_checking=False, is_global_zero=rank_zero)
        assert renderer._due(fake) is rank_zero
