"""Plotting: one setup call, shared colours, and the figures several chapters draw.

Interactive figures are plotly; static grids are matplotlib.

>>> import moe_utils as mu
>>> mu.plots.setup()            # once per notebook, in its hidden setup cell
"""

import sys

import matplotlib as mpl
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.subplots import make_subplots

__all__ = ["COLORS", "DATA_COLOR", "color", "data_traces", "line_trace", "setup", "subplots"]

# Expert e is drawn in COLORS[e % len(COLORS)] in every chapter (plotly's default sequence).
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DATA_COLOR = "#6b6b6b"


def color(e: int) -> str:
    """The colour of expert (or regime) ``e``."""
    return COLORS[e % len(COLORS)]


def setup() -> None:
    """Choose a plotly renderer that survives the book build, and a matplotlib style.

    Plotly's default renderer inside a kernel is a mimetype that Jupyter Book cannot show
    (the figure silently disappears); ``notebook_connected`` writes HTML that renders in
    Jupyter, in the built book and offline in the book (the book serves plotly.js itself).
    Colab has its own renderer.
    """
    pio.renderers.default = "colab" if "google.colab" in sys.modules else "notebook_connected"
    pio.templates.default = "plotly_white"
    mpl.rcParams.update({
        "figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=COLORS), "font.size": 10,
    })


def _np(t):
    return t.detach().cpu().double().numpy() if torch.is_tensor(t) else np.asarray(t)


def subplots(titles: list[str], cols: int = 3, row_height: int = 300, **kwargs) -> go.Figure:
    """An empty grid of plotly subplots, one per title, filled row by row; legend below."""
    rows = -(-len(titles) // cols)
    kwargs.setdefault("vertical_spacing", 0.25 / rows)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, **kwargs)
    fig.update_layout(height=row_height * rows + 120, margin=dict(l=40, r=20, t=60, b=40),
                      legend=dict(orientation="h", yanchor="top", y=-0.08 / rows, x=0))
    return fig


def data_traces(x, y, labels=None, showlegend: bool = True) -> list[go.Scatter]:
    """Scatter traces of 1-D regression data, one per regime/expert if ``labels`` (N,) is given."""
    x, y = _np(x), _np(y)
    if labels is None:
        return [go.Scatter(x=x, y=y, mode="markers", name="data", legendgroup="data",
                           showlegend=showlegend, marker=dict(size=4, color=DATA_COLOR, opacity=0.5))]
    labels = _np(labels).astype(int)
    return [go.Scatter(x=x[labels == e], y=y[labels == e], mode="markers", name=f"regime {e}",
                       legendgroup=f"regime {e}", showlegend=showlegend,
                       marker=dict(size=4, color=color(e), opacity=0.5))
            for e in np.unique(labels)]


def line_trace(x, y, name: str, line_color: str = "black", dash: str | None = None,
               showlegend: bool = True, width: float = 2.0) -> go.Scatter:
    """A curve through (x, y), drawn in order of x."""
    x, y = _np(x), _np(y)
    order = np.argsort(x, kind="stable")
    return go.Scatter(x=x[order], y=y[order], mode="lines", name=name, legendgroup=name,
                      showlegend=showlegend, line=dict(color=line_color, dash=dash, width=width))
