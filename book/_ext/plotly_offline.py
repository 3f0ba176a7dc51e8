"""Serve plotly.js from the installed plotly package on every page that has a plotly figure.

The chapters' figures are written by plotly's ``notebook_connected`` renderer, which loads
plotly.js from a CDN. Serving the same file from the book itself makes the figures render
offline too (a downloaded or locally built book); online, the CDN copy is a cache hit. It also
drops the extra MathJax that plotly's renderer adds to every figure.
"""

import re
import shutil
from pathlib import Path

import plotly

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
# plotly's notebook renderer loads a MathJax of its own (SVG output) with every figure; the page
# already loads the book's MathJax, with the course's macros, and one copy is enough.
PLOTLY_MATHJAX = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"></script>')


def _add_on_plotly_pages(app, pagename, templatename, context, doctree):
    body = context.get("body", "")
    if "plotly-graph-div" in body:
        context["body"] = PLOTLY_MATHJAX.sub("", body)
        app.add_js_file("plotly.min.js", priority=100)


def _copy_plotly_js(app, exception):
    if exception is None and app.builder.format == "html":
        shutil.copy(PLOTLY_JS, Path(app.outdir) / "_static" / "plotly.min.js")


def setup(app):
    app.connect("html-page-context", _add_on_plotly_pages)
    app.connect("build-finished", _copy_plotly_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
