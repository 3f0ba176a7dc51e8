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

__all__ = ["COLORS", "DATA_COLOR", "color", "data_traces", "iterations_figure", "line_trace", "setup", "subplots"]

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
    """As a float32 NumPy array: half the bytes of float64 in the figure JSON, and plenty for a plot."""
    return (t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)).astype(np.float32)


def subplots(titles: list[str], cols: int = 3, row_height: int = 300, **kwargs) -> go.Figure:
    """An empty grid of plotly subplots, one per title, filled row by row; legend below."""
    rows = -(-len(titles) // cols)
    kwargs.setdefault("vertical_spacing", 0.25 / rows)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, **kwargs)
    fig.update_layout(height=row_height * rows + 140, margin=dict(l=40, r=20, t=60, b=90),
                      legend=dict(orientation="h", yanchor="top", y=-70 / (row_height * rows), x=0))
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


def iterations_figure(x, y, grid, frames: list[dict], title: str = "", max_points: int = 600) -> go.Figure:
    """A slider over EM iterations: data coloured by their most responsible expert, the expert
    lines (top) and the gate (bottom), one slider step per frame.

    x (N,), y (N,), grid (G,); each frame is a dict with ``label``, ``resp`` (N, E),
    ``means`` (G, E) and ``gate`` (G, E). At most ``max_points`` data points are drawn.
    """
    keep = np.linspace(0, len(x) - 1, min(max_points, len(x))).astype(int)
    x, y, grid = _np(x)[keep], _np(y)[keep], _np(grid)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    per_frame = []
    for k, frame in enumerate(frames):
        resp, means, gate = _np(frame["resp"])[keep], _np(frame["means"]), _np(frame["gate"])
        owner, n_experts, first = resp.argmax(1), means.shape[1], len(fig.data)
        for e in range(n_experts):
            show = dict(visible=k == 0, legendgroup=f"expert {e}", showlegend=True)
            fig.add_scatter(x=x[owner == e], y=y[owner == e], mode="markers", name=f"expert {e}", row=1, col=1,
                            marker=dict(size=4, color=color(e), opacity=0.45), **show)
            fig.add_scatter(x=grid, y=means[:, e], mode="lines", line=dict(color=color(e), width=2.5),
                            row=1, col=1, **{**show, "showlegend": False})
            fig.add_scatter(x=grid, y=gate[:, e], mode="lines", line=dict(color=color(e), width=2.5),
                            row=2, col=1, **{**show, "showlegend": False})
        per_frame.append(range(first, len(fig.data)))
    steps = []
    for k, frame in enumerate(frames):
        visible = [i in per_frame[k] for i in range(len(fig.data))]
        steps.append(dict(method="update", label=str(frame["label"]), args=[{"visible": visible}]))
    lo, hi = float(np.min(y)), float(np.max(y))
    fig.update_yaxes(range=[lo - 0.2 * (hi - lo), hi + 0.2 * (hi - lo)], title_text="y", row=1, col=1)
    fig.update_yaxes(range=[-0.05, 1.05], title_text="gate g(x)", row=2, col=1)
    fig.update_xaxes(title_text="x", row=2, col=1)
    fig.update_layout(title=title, height=620, margin=dict(l=50, r=20, t=60, b=40),
                      sliders=[dict(steps=steps, currentvalue=dict(prefix="iteration "), pad=dict(t=40))])
    return fig
