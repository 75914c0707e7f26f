"""docs/quickstart.ipynb runs from top to bottom on a smoke checkpoint, in a kernel of this environment
(ipykernel's python3, the Python running the tests), shows a player per prompt and saves the files."""
from pathlib import Path

import nbformat
from conftest import ROOT
from nbclient import NotebookClient


def test_the_quickstart_notebook_plays_each_prompt_and_saves_its_files(smoke_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSEGEN_CHECKPOINT", str(smoke_run["ckpt"]))   # the kernel inherits the environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(ROOT / "docs" / "quickstart.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), "docs/quickstart.ipynb is kept without outputs"
    workdir = tmp_path / "docs"   # where the notebook runs: its ../outputs/ is tmp_path/outputs/
    workdir.mkdir()
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    html = "".join(out.get("data", {}).get("text/html", "") for out in outputs)
    assert html.count("<audio") == 2 and "calm piano melody" in html and "fast violin tune" in html
    saved = sorted(p.name for p in Path(tmp_path / "outputs" / "quickstart").iterdir())
    for name in ("calm-piano-melody-s0", "fast-violin-tune-s0"):
        assert {f"{name}.wav", f"{name}.mp3", f"{name}.mid"} <= set(saved), saved
