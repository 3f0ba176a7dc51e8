"""papermill can run a chapter with other parameters; its assert cells still hold."""

import nbformat
import papermill as pm
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_chapter_01_with_another_seed(tmp_path):
    out = tmp_path / "01.ipynb"
    pm.execute_notebook(ROOT / "chapters" / "01_data_and_baselines.ipynb", out, cwd=ROOT / "chapters",
                        parameters={"SEED": 1, "N_BAGS": 20}, kernel_name="python3", progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "SEED = 1" in injected[0].source
    assert nb.metadata.papermill.parameters == {"SEED": 1, "N_BAGS": 20}
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
