"""The quickstart notebook runs top to bottom (so it cannot rot)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("GARMENT_WORK", str(tmp_path / "work"))
    monkeypatch.delenv("GARMENT_MODEL", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # data triples, the grid, the single garment
    assert (tmp_path / "work" / "eval" / "metrics.json").is_file()
    assert os.environ.get("GARMENT_WORK") == str(tmp_path / "work")
