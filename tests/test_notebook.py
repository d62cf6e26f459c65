"""The quickstart notebook runs top to bottom (so it cannot rot)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.parametrize("data", ["sample", "portrait"])
def test_quickstart_notebook_runs(tmp_path, monkeypatch, request, data):
    monkeypatch.setenv("GARMENT_WORK", str(tmp_path / "work"))
    monkeypatch.delenv("GARMENT_MODEL", raising=False)
    if data == "portrait":  # a 3:4 dataset: the notebook trains and evaluates a portrait model
        monkeypatch.setenv("GARMENT_DATA", str(request.getfixturevalue("portrait_data")))
    else:
        monkeypatch.delenv("GARMENT_DATA", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # data triples, the grid, the single garment
    metrics = json.loads((tmp_path / "work" / "eval" / "metrics.json").read_text())
    assert metrics["aspect"] == ("3:4" if data == "portrait" else "1:1")
    assert os.environ.get("GARMENT_WORK") == str(tmp_path / "work")
