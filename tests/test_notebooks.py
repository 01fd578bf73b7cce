"""Every tutorial notebook runs top to bottom (FAST mode), is committed without outputs, and is in the README."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_numbered_in_order_and_each_links_to_the_next():
    """00, 01, ... without gaps, and each notebook's last cell names the next one (the course's path)."""
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(NOTEBOOKS))) and len(NOTEBOOKS) >= 10
    for here, after in zip(NOTEBOOKS, NOTEBOOKS[1:]):
        last = "".join(json.loads(here.read_text())["cells"][-1]["source"])
        assert after.name in last, f"{here.name} does not link to {after.name} in its last cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


def test_each_notebook_tags_one_key_figure_and_the_gallery_keeps_it(tmp_path):
    """One cell per notebook is tagged for the gallery (python -m cswap_nb gallery --notebooks); the gallery runs
    a notebook and saves exactly that cell's figure, captioned with the notebook's title and what it printed."""
    import nbformat

    from cswap_nb.ui.gallery import KEY_TAG, notebook_key_figures

    for path in NOTEBOOKS:
        tagged = [c for c in json.loads(path.read_text())["cells"] if KEY_TAG in c["metadata"].get("tags", [])]
        assert len(tagged) == 1 and tagged[0]["cell_type"] == "code", path.name
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · A tiny lesson\n\ntext"),
                nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\n%matplotlib inline\nplt.plot([0, 1], [1, 0])"),
                nbformat.v4.new_code_cell("fig, ax = plt.subplots(figsize=(2, 2))\nax.bar([0, 1], [3, 4])\n"
                                          "print('the answer is 42')"),
                nbformat.v4.new_code_cell("fig, ax = plt.subplots(figsize=(5, 1))\nax.plot([0, 1])")]
    nb.cells[2].metadata["tags"] = [KEY_TAG]
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(nb, path)
    (name, caption), = notebook_key_figures([path], tmp_path / "out", fast=True)
    png = (tmp_path / "out" / name).read_bytes()
    assert name == "99_tiny.png" and png[:4] == b"\x89PNG"
    import struct
    width, height = struct.unpack(">II", png[16:24])
    assert width < 2 * height  # the tagged 2x2-inch figure, not the wide one drawn after it
    assert "99 · A tiny lesson" in caption and "the answer is 42" in caption and "FAST" in caption
    untagged = tmp_path / "98_untagged.ipynb"
    nb.cells[2].metadata["tags"] = []
    nbformat.write(nb, untagged)
    with pytest.raises(ValueError, match="tag exactly one"):
        notebook_key_figures([untagged], tmp_path / "out")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_listed_in_readme(path):
    assert path.name in (ROOT / "README.md").read_text(), f"{path.name} is not listed in README.md"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CSWAP_NB_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    assert images >= 1, f"{path.name} drew no figure"
