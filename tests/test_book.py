"""A warnings-as-errors build of the book, then checks of the built HTML."""

import os
import re
import shutil
import subprocess

import nbformat
import pytest
from bs4 import BeautifulSoup

from conftest import BRANCH, CHAPTERS, ROOT, URL

pytestmark = pytest.mark.slow

# Pages whose equations must typeset offline: every chapter, and the page that uses the most of
# the MathJax macros defined in _config.yml.
MATH_PAGES = [f"chapters/{c.stem}.html" for c in CHAPTERS] + ["book/notation.html"]
# A browser with no network: every remote host goes through a proxy that refuses connections
# (port 9, discard), name lookups fail, and nothing runs in the background.
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--host-resolver-rules=MAP * ~NOTFOUND"]
# Raw TeX left in a math element: a command, a delimiter, or $$. An undefined macro also lands
# here (MathJax typesets it as red text, its backslash included).
RAW_TEX = re.compile(r"\\[A-Za-z([]|\$\$")


def page(html_root, chapter):
    return BeautifulSoup((html_root / "chapters" / f"{chapter.stem}.html").read_text(), "html.parser")


def test_every_book_page_is_built(built_book):
    for name in ("intro", "setup", "notation", "glossary", "bibliography", "instructors"):
        assert (built_book / "book" / f"{name}.html").exists()
    assert (built_book / "index.html").exists()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_plotly_figure_is_on_the_page(built_book, chapter):
    nb = nbformat.read(chapter, as_version=4)
    in_notebook = sum("plotly-graph-div" in o.get("data", {}).get("text/html", "")
                      for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    figures = page(built_book, chapter).select("div.plotly-graph-div")
    assert in_notebook > 0 and len(figures) == in_notebook
    # plotly.js is served by the book itself, so the figures render offline too.
    assert (built_book / "_static" / "plotly.min.js").stat().st_size > 1_000_000
    assert page(built_book, chapter).find("script", src=re.compile(r"_static/plotly\.min\.js"))
    # one MathJax per page, the book's (plotly's renderer adds its own to every figure)
    mathjax = page(built_book, chapter).find_all("script", src=re.compile(r"mathjax", re.IGNORECASE))
    assert len(mathjax) == 1, [s["src"] for s in mathjax]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_launch_and_download_buttons(built_book, chapter):
    soup = page(built_book, chapter)
    links = [a.get("href", "") for a in soup.find_all("a")]
    github = URL.removeprefix("https://github.com/")  # owner/name, from _config.yml
    colab = f"https://colab.research.google.com/github/{github}/blob/{BRANCH}/chapters/{chapter.name}"
    assert colab in links, "no Colab launch link to the committed notebook"
    assert any(href.startswith(f"https://mybinder.org/v2/gh/{github}/{BRANCH}") for href in links)
    assert soup.select(".dropdown-download-buttons"), "no download button"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_citations_resolve_to_the_bibliography(built_book, chapter):
    soup = page(built_book, chapter)
    text = soup.get_text()
    assert "{cite}" not in text and "??" not in text
    cites = [a for a in soup.find_all("a", href=True) if "bibliography.html#" in a["href"]]
    assert cites, "no resolved citation"
    bib = BeautifulSoup((built_book / "book" / "bibliography.html").read_text(), "html.parser")
    anchors = {tag.get("id") for tag in bib.find_all(id=True)}
    for a in cites:
        assert a["href"].split("#")[1] in anchors


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_math_exercises_and_hidden_setup(built_book, chapter):
    soup = page(built_book, chapter)
    assert soup.select("div.math"), "no display math"
    assert soup.select(".exercise") and soup.select(".solution"), "exercises and solutions render"
    assert "importlib.util.find_spec" not in soup.get_text(), "the setup cell must be removed from the page"
    assert soup.select(".cell.tag_parameters"), "the parameters cell is shown"


def test_bibliography_lists_the_primary_sources(built_book):
    text = BeautifulSoup((built_book / "book" / "bibliography.html").read_text(), "html.parser").get_text()
    for author in ("Jacobs", "Jordan", "Bishop", "Breiman", "Jang", "Maddison", "Shazeer", "Fedus"):
        assert author in text


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_mathjax_is_served_by_the_book(built_book, chapter):
    soup = page(built_book, chapter)
    (script,) = soup.find_all("script", src=re.compile(r"mathjax", re.IGNORECASE))
    assert "://" not in script["src"], f"MathJax must come from the book, not {script['src']}"
    assert (built_book / "chapters" / script["src"]).resolve().is_file()
    # Sphinx writes the config as "window.MathJax = {...}" (plotly's figures only test for a MathJax 2)
    config = [s.string for s in soup.find_all("script") if s.string and s.string.startswith("window.MathJax = ")]
    assert len(config) == 1 and '"softmax"' in config[0], "the macros of _config.yml reach the page"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (CI installs it); skipped without one, unless MOE_REQUIRE_CHROMIUM=1."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    reason = "no chromium on PATH (Debian: apt-get install chromium): cannot check that math typesets offline"
    if os.environ.get("MOE_REQUIRE_CHROMIUM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.mark.parametrize("path", MATH_PAGES)
def test_equations_typeset_offline(chromium, built_book, tmp_path, path):
    proc = subprocess.run(
        [chromium, *OFFLINE, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", (built_book / path).as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = BeautifulSoup(proc.stdout, "html.parser")
    math = dom.select("div.math, span.math")
    assert math, f"no math on {path} (or chromium printed no DOM)"
    untypeset = [m.get_text()[:80] for m in math if not m.find("mjx-container")]
    assert not untypeset, f"{len(untypeset)} of {len(math)} equations not typeset offline: {untypeset[:3]}"
    raw = [m.get_text()[:80] for m in math if RAW_TEX.search(m.get_text())]
    assert not raw, f"raw TeX left after typesetting (an undefined macro?): {raw[:3]}"
