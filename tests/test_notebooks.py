"""Every chapter follows the course's notebook conventions (COURSE.md)."""

import ast
import re
import subprocess
import sys

import nbformat
import pytest

from conftest import BRANCH, CHAPTERS, ROOT, URL, sync_links


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(params=CHAPTERS, ids=lambda p: p.stem)
def chapter(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_there_are_chapters_named_nn_topic():
    assert CHAPTERS, "no chapters found"
    for path in CHAPTERS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name


def test_chapter_is_in_the_table_of_contents(chapter):
    path, _ = chapter
    assert f"file: chapters/{path.stem}\n" in (ROOT / "_toc.yml").read_text()


def test_setup_cell_first_and_hidden(chapter):
    path, nb = chapter
    first = code_cells(nb)[0]
    assert "remove-cell" in first.metadata.get("tags", [])
    assert first.source == sync_links.setup_cell(URL, BRANCH), "run `python book/sync_links.py`"
    assert "torch" not in re.sub(r"#.*", "", first.source)  # never pins or installs torch on Colab
    assert "plots.setup()" in first.source


def test_parameters_cell_second_with_typed_commented_literals(chapter):
    path, nb = chapter
    params = code_cells(nb)[1]
    assert "parameters" in params.metadata.get("tags", [])
    lines = [line for line in params.source.splitlines() if line.strip()]
    names = []
    for line in lines:
        node = ast.parse(line).body[0]
        assert isinstance(node, ast.AnnAssign), f"not `NAME: type = literal  # comment`: {line}"
        ast.literal_eval(node.value)
        assert "#" in line, f"parameter without a comment: {line}"
        names.append(node.target.id)
    assert {"SEED", "DEVICE"} <= set(names)
    assert 'DEVICE: str = "auto"' in params.source


def test_metadata_kernel_and_colab_gpu(chapter):
    _, nb = chapter
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.get("accelerator") == "GPU"
    assert nb.metadata.colab.get("gpuType")


def test_colab_badge_matches_the_repository_url(chapter):
    path, nb = chapter
    first_md = next(c for c in nb.cells if c.cell_type == "markdown")
    assert first_md.source.lstrip().startswith("# "), "the first markdown cell starts with the title"
    assert sync_links.colab_badge(URL, BRANCH, path) in first_md.source


def test_sync_links_reports_nothing_to_do():
    proc = subprocess.run([sys.executable, str(ROOT / "book" / "sync_links.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_nbval_comments_and_tags_instead(chapter):
    _, nb = chapter
    for cell in code_cells(nb):
        assert "NBVAL" not in cell.source, "use cell tags, not # NBVAL comments (they show in the book)"
    tags = [t for c in code_cells(nb) for t in c.metadata.get("tags", [])]
    assert "nbval-check-output" in tags, "the results table must be checked by nbval"


def test_executed_with_outputs_and_no_errors(chapter):
    path, nb = chapter
    cells = code_cells(nb)
    assert all(c.execution_count is not None for c in cells), "run `make execute` and commit the outputs"
    assert not any(o.output_type == "error" for c in cells for o in c.outputs)
    assert "papermill" in nb.metadata, "chapters are executed by papermill"
    assert sum(len(c.outputs) for c in cells) > 5


def test_progress_bars_and_warnings_stay_out_of_the_book(chapter):
    _, nb = chapter
    for i, cell in enumerate(code_cells(nb)):
        if any(o.output_type == "stream" and o.name == "stderr" for o in cell.outputs):
            assert "remove-stderr" in cell.metadata.get("tags", []), f"code cell {i} writes to stderr"


def test_quality_bars_live_in_assert_cells(chapter):
    _, nb = chapter
    asserts = [c for c in code_cells(nb) if re.search(r"^\s*assert\b", c.source, re.MULTILINE)]
    assert len(asserts) >= 3


def test_interactive_figures_use_plotly_html(chapter):
    _, nb = chapter
    html = [o for c in code_cells(nb) for o in c.outputs if "text/html" in o.get("data", {})
            and "plotly-graph-div" in o["data"]["text/html"]]
    assert html, "no interactive plotly figure"
    assert not any("application/vnd.plotly.v1+json" in o.get("data", {}) for c in code_cells(nb) for o in c.outputs)


def test_exercises_have_solutions(chapter):
    _, nb = chapter
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    exercises = re.findall(r":::+\{exercise\}\s*\n:label: (\S+)", text)
    solved = set(re.findall(r":::+\{solution(?:-start)?\} (\S+)", text))
    assert len(exercises) >= 3
    assert set(exercises) <= solved, f"exercises without a solution: {set(exercises) - solved}"


def test_bibliography_parses_with_unique_keys():
    """pybtex, which the book build uses, reads every entry (a merge that drops a closing brace
    otherwise only shows as a failed book build), and no key is defined twice."""
    from pybtex.database import parse_file

    text = (ROOT / "book" / "references.bib").read_text()
    keys = re.findall(r"@\w+\{([^,\s]+),", text)
    assert len(parse_file(str(ROOT / "book" / "references.bib")).entries) == len(keys) == len(set(keys))


def test_every_bibliography_entry_is_cited():
    keys = set(re.findall(r"@\w+\{([^,\s]+),", (ROOT / "book" / "references.bib").read_text()))
    pages = [ROOT / "book" / f for f in ("intro.md", "setup.md", "notation.md", "glossary.md", "instructors.md")]
    text = "\n".join(p.read_text() for p in pages if p.exists())
    text += "\n".join(c.source for path in CHAPTERS for c in nbformat.read(path, as_version=4).cells)
    cited = {k.strip() for group in re.findall(r"\{cite[pt]?\}`([^`]+)`", text) for k in group.split(",")}
    assert keys, "no entries in references.bib"
    assert not keys - cited, f"entries never cited: {sorted(keys - cited)}"
    assert not cited - keys, f"citations without an entry: {sorted(cited - keys)}"
