"""papermill can run a chapter with other parameters; its assert cells still hold."""

import nbformat
import papermill as pm
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

CHAPTER = ROOT / "chapters" / "01_data_and_baselines.ipynb"


def results_table(nb) -> str:
    """The printed output of the chapter's checked results table."""
    cell = next(c for c in nb.cells if "nbval-check-output" in c.metadata.get("tags", []))
    return "".join(o.get("text", "") for o in cell.outputs)


@pytest.mark.parametrize("parameters", [{"SEED": 1, "N_BAGS": 20}, {"NOISE": 0.1, "N_BAGS": 20}],
                         ids=["another seed", "more noise (exercise 2)"])
def test_chapter_01_with_other_parameters(tmp_path, parameters):
    out = tmp_path / "01.ipynb"
    pm.execute_notebook(CHAPTER, out, cwd=ROOT / "chapters", parameters=parameters, kernel_name="python3",
                        progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and all(f"{k} = {v}" in injected[0].source for k, v in parameters.items())
    assert nb.metadata.papermill.parameters == parameters
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # the parameters reached the computation: the results differ from the committed run's
    committed = nbformat.read(CHAPTER, as_version=4)
    assert results_table(nb) and results_table(nb) != results_table(committed)
