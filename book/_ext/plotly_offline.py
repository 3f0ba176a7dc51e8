"""Serve plotly.js from the installed plotly package on every page that has a plotly figure.

The chapters' figures are written by plotly's ``notebook_connected`` renderer, which loads
plotly.js from a CDN. Serving the same file from the book itself makes the figures render
offline too (a downloaded or locally built book); online, the CDN copy is a cache hit.
"""

import shutil
from pathlib import Path

import plotly

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _add_on_plotly_pages(app, pagename, templatename, context, doctree):
    if "plotly-graph-div" in context.get("body", ""):
        app.add_js_file("plotly.min.js", priority=100)


def _copy_plotly_js(app, exception):
    if exception is None and app.builder.format == "html":
        shutil.copy(PLOTLY_JS, Path(app.outdir) / "_static" / "plotly.min.js")


def setup(app):
    app.connect("html-page-context", _add_on_plotly_pages)
    app.connect("build-finished", _copy_plotly_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
