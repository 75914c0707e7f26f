"""musegen as a researcher installs it: `pip install .` gives a wheel that carries its configs, and
console scripts that work from any folder, writing under that folder's ./outputs (and ./data)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

import musegen

#: the console scripts the wheel must install
SCRIPTS = {"musegen-train", "musegen-generate", "musegen-evaluate", "musegen-resynth", "musegen-app"}


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command as a user would (offline, MUSEGEN_ROOT unset so paths follow `cwd`); fail with its stderr."""
    env = {k: v for k, v in os.environ.items() if k != "MUSEGEN_ROOT"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel built from it, as `python -m build` makes them for a release (no
    downloads: the build backend is the one installed here)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], cwd=out)
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


@pytest.fixture(scope="module")
def installed(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh venv outside the clone with the wheel installed. The dependencies are
    this venv's, seen through a .pth path line (which, unlike a site folder, does not run this venv's
    own .pth files, so the clone's editable musegen stays out)."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, symlinks=True, with_pip=False)
    python = env / "bin" / "python"
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    (site / "musegen-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(dists["wheel"])], cwd=env)
    code = "import musegen, musegen.conf; print(musegen.__file__, musegen.conf.__file__)"
    where = run([str(python), "-c", code], cwd=env).stdout.split()
    assert all(Path(p).is_relative_to(env) for p in where), f"musegen imported from outside the new venv: {where}"
    return env / "bin"


def test_wheel_and_sdist_carry_every_module_config_and_the_license(dists):
    dist_info = f"musegen-{musegen.__version__}.dist-info"
    with zipfile.ZipFile(dists["wheel"]) as archive:
        wheel = set(archive.namelist())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "musegen").rglob("*.py") if "__pycache__" not in p.parts}
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert "conf/hydra/launcher/slurm_ddp.yaml" in configs and "conf/model/head/tokens.yaml" in configs
    assert modules <= wheel, f"modules missing from the wheel (pyproject's packages list): {modules - wheel}"
    assert {f"musegen/{c}" for c in configs} | {"musegen/conf/__init__.py", "musegen/py.typed"} <= wheel
    assert f"{dist_info}/licenses/LICENSE" in wheel
    assert all(f"{script} = " in entry_points for script in SCRIPTS)

    with tarfile.open(dists["sdist"]) as sdist:
        top = f"musegen-{musegen.__version__}/"
        names = {n.removeprefix(top) for n in sdist.getnames()}
    assert configs | {"conf/__init__.py", "musegen/py.typed", "LICENSE", "README.md", "pyproject.toml"} <= names


def test_console_scripts_train_and_generate_from_any_folder(installed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    run([str(installed / "musegen-train"), "experiment=smoke", "run_name=run"], cwd=work)
    run_dir = work / "outputs" / "smoke" / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert any((work / "data" / "demo").rglob("*.wav")), "the demo set is built under the folder's ./data"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run([str(installed / "musegen-generate"), f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
               "prompt=calm piano melody", "duration=2"], cwd=elsewhere)
    printed = dict(line.strip().split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    wav = elsewhere / printed["wav"]
    assert wav.is_file() and wav.name == "calm-piano-melody-s0.wav"
    assert wav.resolve().is_relative_to((elsewhere / "outputs" / "generate").resolve())

    # the README's Python example, as written but for the checkpoint's path, in the fresh venv
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(import musegen\n.*?)```", readme, re.S).group(1)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    example = example.replace("outputs/demo/make-demo/checkpoints/last.ckpt", str(ckpt))
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    run([str(installed / "python"), "-c", example], cwd=notebook)
    written = sorted(p.name for p in (notebook / "out").iterdir())
    assert [n for n in written if n.endswith(".wav")] == ["calm-piano-melody-s0.midi.wav", "calm-piano-melody-s0.wav",
                                                          "fast-violin-tune-s0.midi.wav", "fast-violin-tune-s0.wav"]
