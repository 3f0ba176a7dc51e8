"""Build the graded assignments: student and autograder versions of every master, with otter-grader.

Each master notebook in ``chapters/assignments/`` is an otter-assign (v1) notebook: questions with
solutions, public tests and hidden tests. For each one this script

1. writes the setup cell from the repository URL in ``_config.yml`` (on Colab it installs
   ``moe_utils`` and otter-grader; everywhere it starts the grader on the public tests),
2. runs ``otter assign`` (solutions and hidden tests stripped from the student version),
3. names the autograder zip ``<name>-autograder.zip``, and
4. embeds the public tests in the student notebook itself, so that one ``.ipynb`` works on Colab
   (which has no folder beside the notebook) and locally. Grading always uses the autograder's
   full tests: ``otter run`` puts them in ``tests/``, which the public copy never touches.

    python book/assignments.py                 # all masters -> _build/assignments/<name>/
    python book/assignments.py 02_em_by_hand   # some of them
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sync_links  # noqa: E402

ROOT = sync_links.ROOT
MASTERS = ROOT / "chapters" / "assignments"
OUT = ROOT / "_build" / "assignments"
OTTER = "otter-grader==7.0.0"
SETUP_MARK = "# SETUP"
PUBLIC_MARK = "# PUBLIC TESTS"

SETUP = '''\
# Setup. On Colab this installs moe_utils (from the course repository) and otter-grader; its
# requirements are loose lower bounds, so Colab's own torch and numpy are kept.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("moe_utils") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "moe_utils[chapters] @ git+{url}@{branch}"], check=True)
if importlib.util.find_spec("otter") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "{otter}"], check=True)
{public}
import otter

grader = otter.Notebook(None if "google.colab" in sys.modules else "{notebook}", tests_dir="public_tests")'''


def setup_cell(notebook: str) -> str:
    url, branch = sync_links.repository()
    return SETUP.format(url=url, branch=branch, otter=OTTER, public=PUBLIC_MARK, notebook=notebook)


def embed_public_tests(student: Path) -> None:
    """Write the student's public tests (``tests/*.py`` beside it) into its setup cell."""
    tests = {p.name: p.read_text() for p in sorted((student.parent / "tests").glob("*.py"))}
    nb = nbformat.read(student, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and PUBLIC_MARK in c.source)
    writer = ("import os\n\nos.makedirs('public_tests', exist_ok=True)\n"
              f"for _name, _text in {tests!r}.items():  # the public tests, embedded\n"
              "    with open(os.path.join('public_tests', _name), 'w') as _f:\n        _f.write(_text)")
    cell.source = cell.source.replace(PUBLIC_MARK, writer)
    nbformat.write(nb, student)


def build(master: Path, out: Path) -> Path:
    """Student and autograder versions of one master in ``out``; returns the autograder zip."""
    from otter.assign import main as assign  # imported here: otter takes seconds to import

    if out.exists():
        shutil.rmtree(out)
    nb = nbformat.read(master, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    if not cell.source.startswith(SETUP_MARK):
        raise SystemExit(f"{master}: the first code cell must be the '{SETUP_MARK}' placeholder")
    cell.source = setup_cell(master.name)
    with tempfile.TemporaryDirectory() as tmp:
        filled = Path(tmp) / master.name
        nbformat.write(nb, filled)
        assign(str(filled), str(out), no_run_tests=True)
    zips = list((out / "autograder").glob("*-autograder_*.zip"))
    stable = out / "autograder" / f"{master.stem}-autograder.zip"
    zips[0].rename(stable)
    embed_public_tests(out / "student" / master.name)
    return stable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="master names (default: every master)")
    args = parser.parse_args()
    masters = sorted(MASTERS.glob("*.ipynb"))
    if args.names:
        masters = [m for m in masters if m.stem in args.names]
    for master in masters:
        zip_path = build(master, OUT / master.stem)
        print(f"{master.relative_to(ROOT)} -> {zip_path.parent.parent.relative_to(ROOT)}/{{student,autograder}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
