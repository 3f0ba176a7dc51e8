"""Write everything that derives from the repository URL into the chapters.

The repository URL and branch live in ONE place, ``_config.yml`` (``repository:``). The book's
launch buttons read them there; this script writes the rest into every ``chapters/*.ipynb``:

- the "Open in Colab" badge (first markdown cell, the line after the title),
- the hidden setup cell (first code cell), which installs ``moe_utils`` from the repository
  when it is not importable (on Colab), and
- the notebook metadata: kernelspec ``python3``, Colab asks for a GPU runtime.

    python book/sync_links.py            # rewrite the chapters
    python book/sync_links.py --check    # exit 1 if a chapter is out of date (used by the tests)
"""

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BADGE_RE = re.compile(r"^\[!\[Open In Colab\]\(.*\)\]\(.*\)$|^BADGE$", re.MULTILINE)

SETUP = '''\
# Make `moe_utils` importable. On Colab this installs it from the course repository; its
# requirements are loose lower bounds, so Colab's own torch and numpy are kept.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("moe_utils") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "moe_utils[chapters] @ git+{url}@{branch}"], check=True)

import moe_utils as mu

mu.plots.setup()'''

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
    "accelerator": "GPU",
    "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
}


def repository() -> tuple[str, str]:
    """The repository URL (no trailing slash or .git) and branch from _config.yml."""
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return repo["url"].rstrip("/").removesuffix(".git"), repo.get("branch", "main")


def colab_badge(url: str, branch: str, notebook: Path) -> str:
    path = notebook.resolve().relative_to(ROOT).as_posix()
    github = url.removeprefix("https://github.com/")
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{github}/blob/{branch}/{path})")


def setup_cell(url: str, branch: str) -> str:
    return SETUP.format(url=url, branch=branch)


def sync(notebook: Path, url: str, branch: str) -> nbformat.NotebookNode:
    """The notebook with badge, setup cell and metadata written from (url, branch)."""
    nb = nbformat.read(notebook, as_version=4)
    first_md = next(c for c in nb.cells if c.cell_type == "markdown")
    if not BADGE_RE.search(first_md.source):
        raise SystemExit(f"{notebook}: the first markdown cell has no Colab badge line to update")
    first_md.source = BADGE_RE.sub(colab_badge(url, branch, notebook), first_md.source, count=1)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    first_code.source = setup_cell(url, branch)
    first_code.metadata["tags"] = ["remove-cell"]
    for key, value in METADATA.items():
        if key == "language_info":
            nb.metadata.setdefault(key, {}).update(value)
        else:
            nb.metadata[key] = value
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report chapters that are out of date")
    args = parser.parse_args()
    url, branch = repository()
    stale = []
    for notebook in sorted((ROOT / "chapters").glob("*.ipynb")):
        synced = sync(notebook, url, branch)
        if synced != nbformat.read(notebook, as_version=4):
            stale.append(notebook.relative_to(ROOT).as_posix())
            if not args.check:
                nbformat.write(synced, notebook)
    if args.check and stale:
        print("out of date (run `python book/sync_links.py`):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
