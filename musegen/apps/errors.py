"""The one error path of the applications (train.py, generate.py, evaluate.py, musegen.resynth).

A user's mistake (bad data, a bad argument, a model that is not available, a refused checkpoint, an
output that cannot be written) is one line on stderr naming the input and what is wrong, and exit
status 2: a traceback would bury that line under frames the user cannot act on. A run that fails,
for any reason, leaves nothing that looks like a result: its run folder is removed when it holds no
checkpoint, else marked with a FAILED file. HYDRA_FULL_ERROR=1 shows the traceback, for developers;
in a multirun the error goes on to Hydra, which records the trial as failed and carries on.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

from musegen.checkpoint import CheckpointError
from musegen.data.cache import CacheError
from musegen.data.sources import DataSourceError
from musegen.features import AudioError
from musegen.fluid import FluidSynthError
from musegen.io import atomic_path
from musegen.text import TextModelUnavailable

log = logging.getLogger(__name__)

#: Errors that are the user's to fix, reported as one line; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError, AudioError, CacheError, DataSourceError, TextModelUnavailable, FluidSynthError,
    ValueError, TypeError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
    MissingMandatoryValue,
)
EXIT_USER_ERROR = 2
#: Written into a failed run's folder that keeps checkpoints, with the error.
FAILED = "FAILED"


@contextmanager
def user_errors(app: str, run_dir: str | Path | None = None, stop_at: str | Path | None = None) -> Iterator[None]:
    """Run an application's work: a user error becomes `<app>: <message>` on stderr and exit status 2.

    `run_dir` is the folder Hydra made for this run (None when the application writes only where it
    is told, as generate.py): when the work fails it is removed, with the empty folders above it up
    to `stop_at`, unless it holds checkpoints (a resumable run), which get a FAILED marker instead.
    A later success clears a FAILED marker.
    """
    run = _RunFolder(Path(run_dir), Path(stop_at) if stop_at else None) if run_dir is not None else None
    try:
        yield
    except (Exception, KeyboardInterrupt) as err:
        user_error = _user_error(err)
        message = describe(user_error) if user_error is not None else f"{type(err).__name__}: {err}"
        if run is not None:
            run.fail(f"{app}: {message}")
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or _multirun():
            raise
        print(f"{app}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    if run is not None:
        run.succeeded()


def describe(err: BaseException) -> str:
    """One line naming the input and what is wrong with it."""
    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key} is required: give it on the command line as {err.full_key}=..."
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def _user_error(err: BaseException) -> BaseException | None:
    """`err`, or what Hydra's instantiate wrapped, when it is a user error; else None."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err if isinstance(err, USER_ERRORS) else None


def _multirun() -> bool:
    mode = HydraConfig.get().mode if HydraConfig.initialized() else None
    return mode is not None and mode.name == "MULTIRUN"


class _RunFolder:
    """A run folder as it was when the work started, to undo what a failed run added to it."""

    def __init__(self, path: Path, stop_at: Path | None) -> None:
        self.path, self.stop_at = path, stop_at
        self.before = {p.name for p in path.iterdir()} if path.is_dir() else set()
        # only what Hydra writes before the work starts (its config and the job's log): a folder made for this run
        self.fresh = all(name == ".hydra" or name.endswith(".log") for name in self.before)

    def fail(self, message: str) -> None:
        if not self.path.is_dir():
            return
        checkpoints = any(self.path.glob("checkpoints/*.ckpt"))
        if self.fresh and not checkpoints:
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_empty_parents()
            return
        if not checkpoints:  # a folder that held other things before: take back only what this run added
            for added in (p for p in self.path.iterdir() if p.name not in self.before):
                shutil.rmtree(added) if added.is_dir() and not added.is_symlink() else added.unlink()
        with atomic_path(self.path / FAILED) as tmp:
            tmp.write_text(message + "\n")
        log.info("marked %s as failed", self.path)

    def succeeded(self) -> None:
        (self.path / FAILED).unlink(missing_ok=True)

    def _remove_empty_parents(self) -> None:
        if self.stop_at is None:
            return
        stop = self.stop_at.resolve()
        for parent in self.path.resolve().parents:
            if not parent.is_relative_to(stop):
                return
            try:
                parent.rmdir()
            except OSError:  # not empty
                return
