"""Plotting: one setup call, shared colours, and the figures several chapters draw.

Interactive figures are plotly; static grids are matplotlib.

>>> import moe_utils as mu
>>> mu.plots.setup()            # once per notebook, in its hidden setup cell
"""

import sys

import contourpy  # matplotlib's contouring library
import matplotlib as mpl
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.subplots import make_subplots

__all__ = ["COLORS", "DATA_COLOR", "color", "data_traces", "iterations_figure", "line_trace", "setup", "subplots",
           "decision_figure", "reliability_figure", "confidence_figure", "graphical_model", "mixture_figure"]

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


# ---------------------------------------------------------------------- classifiers in 2-D (chapter 4)
def _contour_xy(xs, ys, z, level: float = 0.5, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """The level set z = level of a grid z (G_y, G_x) as one polyline, pieces separated by NaN."""
    z = np.ma.masked_array(z, mask=mask) if mask is not None else z
    lines = contourpy.contour_generator(xs, ys, z).lines(level)
    if not lines:
        return np.array([np.nan]), np.array([np.nan])
    joined = np.concatenate([np.vstack([line, [np.nan, np.nan]]) for line in lines])
    return joined[:, 0], joined[:, 1]


def _binary(name: str, probs: np.ndarray, expected: tuple) -> None:
    """Raise unless ``probs`` has the shape of a binary classifier's probabilities, ``expected``."""
    if probs.shape != expected:
        shape = "(G, E, 2)" if len(expected) == 3 else "(G, 2)"
        raise ValueError(f"{name} must return {shape} probabilities of 2 classes (decision_figure draws "
                         f"binary classifiers), got {probs.shape}")


def _classifier(model, grid: torch.Tensor):
    """(p(c | x) (G, C), the gate (G, E) or None, the experts' p_e(c | x) (G, E, C) or None) as NumPy
    arrays, of a ``MixtureOfExperts`` with a Categorical head, or of an object with ``predict_proba``
    and, optionally, ``gate_probs`` and ``expert_probs`` (the estimators; a scikit-learn wrapper)."""
    if isinstance(model, torch.nn.Module):
        grid = grid.to(next(model.parameters()))
        with torch.no_grad():
            out = model(grid)
            return (_np(torch.softmax(model.predict(grid, out), -1)), _np(out.routing.log_probs.exp()),
                    _np(torch.softmax(out.experts, -1)))
    if not hasattr(model, "gate_probs"):
        return _np(model.predict_proba(grid)), None, None
    return _np(model.predict_proba(grid)), _np(model.gate_probs(grid)), _np(model.expert_probs(grid))


def decision_figure(models: dict, x, y, rule=None, cols: int = 2, resolution: int = 140,
                    max_points: int = 600, row_height: int = 380, title: str = "") -> go.Figure:
    """Binary classifiers on 2-D inputs, one panel per model, in one interactive figure.

    ``models`` maps a panel title to a classifier: a ``MixtureOfExperts`` with a Categorical head, or
    a model with ``predict_proba(x)`` (N, 2). A mixture (or a model that also has ``gate_probs(x)``
    (N, E) and ``expert_probs(x)`` (N, E, 2), as the estimators do) shows the gate's regions
    (background, expert e in ``color(e)``) and each expert's decision boundary p_e(1 | x) = 1/2
    (solid inside the region the gate gives it, dotted elsewhere). Every panel shows the model's
    boundary p(1 | x) = 1/2 (thick black: where an expert's solid line runs inside it, that expert
    draws the boundary; bare black is drawn by the gate), the exact boundary of ``rule`` (a
    function (G, 2) -> (G,) labels, grey dashes) and up to ``max_points`` of the data x (N, 2), y (N,).
    A model with more than two classes raises ``ValueError``: one contour cannot show its boundaries.
    """
    x, y = _np(x), _np(y).astype(int)
    lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=torch.float64)
    shape, keep = (resolution, resolution), np.linspace(0, len(x) - 1, min(max_points, len(x))).astype(int)
    fig = subplots(list(models), cols=cols, row_height=row_height)
    for i, (name, model) in enumerate(models.items()):
        at, first = dict(row=i // cols + 1, col=i % cols + 1), i == 0
        experts = []  # (expert, dash, x, y) of every expert's boundary line
        proba, gate, probs = _classifier(model, grid)
        _binary(f"models[{name!r}].predict_proba", proba, (len(grid), 2))
        if gate is not None:
            _binary(f"models[{name!r}].expert_probs", probs, (len(grid), gate.shape[1], 2))
            probs = probs[..., 1]
            owner, n_experts = gate.argmax(1).reshape(shape), gate.shape[1]
            scale = [[k / n_experts, color(e)] for e in range(n_experts) for k in (e, e + 1)]
            fig.add_heatmap(x=xs, y=ys, z=owner, zmin=-0.5, zmax=n_experts - 0.5, colorscale=scale, opacity=0.22,
                            showscale=False, hoverinfo="skip", **at)
            experts = [(e, dash, *_contour_xy(xs, ys, probs[:, e].reshape(shape), mask=mask))
                       for e in range(n_experts) for dash, mask in (("dot", None), ("solid", owner != e))]
        lx, ly = _contour_xy(xs, ys, proba[:, 1].reshape(shape))
        fig.add_scatter(x=lx, y=ly, mode="lines", name="model's boundary", legendgroup="model",
                        showlegend=first, line=dict(color="black", width=4.5), **at)
        for e, dash, lx, ly in experts:  # on top of the model's boundary, which they may be part of
            fig.add_scatter(x=lx, y=ly, mode="lines", name=f"expert {e}", legendgroup=f"expert {e}",
                            showlegend=first and dash == "solid", hoverinfo="skip",
                            line=dict(color=color(e), dash=dash, width=2 if dash == "solid" else 1), **at)
        if rule is not None:
            lx, ly = _contour_xy(xs, ys, _np(rule(grid)).reshape(shape))
            fig.add_scatter(x=lx, y=ly, mode="lines", name="true boundary", legendgroup="truth",
                            showlegend=first, line=dict(color=DATA_COLOR, dash="dash", width=2), **at)
        for label, symbol in ((0, "circle-open"), (1, "x-thin-open")):
            sel = keep[y[keep] == label]
            fig.add_scatter(x=x[sel, 0], y=x[sel, 1], mode="markers", name=f"class {label}",
                            legendgroup=f"class {label}", showlegend=first, hoverinfo="skip",
                            marker=dict(size=5, symbol=symbol, color="#333333", opacity=0.55), **at)
        fig.update_xaxes(range=[lo[0], hi[0]], **at)
        fig.update_yaxes(range=[lo[1], hi[1]], scaleanchor=f"x{i + 1 if i else ''}", **at)
    fig.update_layout(title=title)
    return fig


def reliability_figure(curves: dict, title: str = "Reliability diagram") -> go.Figure:
    """Reliability diagrams of several classifiers, with the counts per bin below (log scale).

    ``curves`` maps a name to a ``metrics.Reliability`` (per-bin mean predicted probability,
    observed frequency of class 1 and count, each (B,)). A calibrated model lies on the diagonal.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.06)
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated", line=dict(color=DATA_COLOR, dash="dash"),
                    row=1, col=1)
    for k, (name, rel) in enumerate(curves.items()):
        conf, freq, count = _np(rel.confidence), _np(rel.frequency), _np(rel.count)
        edges = np.linspace(0, 1, len(count) + 1)
        fig.add_scatter(x=conf, y=freq, mode="lines+markers", name=f"{name} (ECE {rel.ece:.3f})", legendgroup=name,
                        line=dict(color=color(k)), row=1, col=1)
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=np.where(count > 0, count, np.nan), width=0.8 / len(count) / len(curves),
                    offset=(k - len(curves) / 2) * 0.8 / len(count) / len(curves), name=name, legendgroup=name,
                    showlegend=False, marker_color=color(k), row=2, col=1)
    fig.update_yaxes(range=[-0.03, 1.03], title_text="fraction of class 1", row=1, col=1)
    fig.update_yaxes(type="log", title_text="samples", row=2, col=1)
    fig.update_xaxes(range=[0, 1], title_text="predicted p(class 1)", row=2, col=1)
    fig.update_layout(title=title, height=560, margin=dict(l=60, r=20, t=60, b=40), barmode="overlay")
    return fig


def confidence_figure(curves: dict, title: str = "Top-label reliability diagram") -> go.Figure:
    """Top-label reliability diagrams (Guo et al., 2017): ``reliability_figure`` with the axes of
    ``metrics.reliability``'s default, accuracy of the top class against its confidence
    max_c p(c | x). ``curves`` maps a name to a ``metrics.Reliability``; the legend shows each ECE."""
    fig = reliability_figure(curves, title)
    fig.update_yaxes(title_text="accuracy of the top class", row=1, col=1)
    fig.update_xaxes(title_text="confidence: max<sub>c</sub> p(c | x)", row=2, col=1)
    return fig


# ---------------------------------------------------------------------- the model as a graph (chapter 2)
def graphical_model():
    """The mixture of experts as a directed graphical model, a matplotlib figure: x_n -> z_n -> y_n
    and x_n -> y_n inside a plate over the N samples; the gate's and the experts' parameters outside.
    Observed nodes are shaded."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for x0, label, observed in ((1.0, r"$x_n$", True), (2.6, r"$z_n$", False), (4.2, r"$y_n$", True)):
        ax.add_patch(Circle((x0, 1.0), 0.38, facecolor="#d9d9d9" if observed else "white", edgecolor="black", lw=1.5))
        ax.text(x0, 1.0, label, ha="center", va="center", fontsize=14)
    for x0, label in ((2.6, r"gate $\theta$"), (4.2, r"$\mathbf{w}_e, b_e, \sigma_e^2$")):
        ax.plot(x0, 2.45, "ko", ms=5)
        ax.text(x0, 2.7, label, ha="center", va="bottom", fontsize=12)
    arrow = dict(arrowstyle="-|>", mutation_scale=14, lw=1.3)
    for start, end in (((1.38, 1.0), (2.22, 1.0)), ((2.98, 1.0), (3.82, 1.0)), ((2.6, 2.4), (2.6, 1.4)),
                       ((4.2, 2.4), (4.2, 1.4))):
        ax.add_patch(FancyArrowPatch(start, end, **arrow))
    ax.add_patch(FancyArrowPatch((1.3, 1.3), (3.9, 1.3), connectionstyle="arc3,rad=-0.35", **arrow))
    ax.add_patch(FancyBboxPatch((0.4, 0.35), 4.4, 1.55, boxstyle="round,pad=0.02", fill=False, lw=1))
    ax.text(4.7, 0.45, r"$n = 1..N$", ha="right", fontsize=10)
    ax.set_xlim(0.2, 5.0)
    ax.set_ylim(0.2, 3.1)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig


# ---------------------------------------------------------------------- gradient training (chapter 3)
def mixture_figure(panels: dict, x, y, grid, title: str = "", max_points: int = 600) -> go.Figure:
    """Fitted mixtures of 1-D experts side by side: one column per panel, the data, each expert's
    line and the blend on top, the gate below.

    ``panels`` maps a column title to a dict with ``experts`` (G, E), each expert's output on
    ``grid`` (G,), ``gate`` (G, E) and, optionally, ``blend`` (G,) (drawn dotted). x (N,), y (N,):
    the data drawn behind every panel (at most ``max_points`` of them).
    """
    names = list(panels)
    fig = subplots([f"{n}: experts" for n in names] + [f"{n}: gate" for n in names], cols=len(names),
                   row_height=280, shared_xaxes=True)
    keep = np.linspace(0, len(_np(x)) - 1, min(max_points, len(_np(x)))).astype(int)
    for col, name in enumerate(names, start=1):
        panel, first = panels[name], col == 1
        fig.add_traces(data_traces(_np(x)[keep], _np(y)[keep], showlegend=first), rows=1, cols=col)
        experts, gate = _np(panel["experts"]), _np(panel["gate"])
        for e in range(experts.shape[1]):
            fig.add_trace(line_trace(grid, experts[:, e], f"expert {e}", color(e), showlegend=first), row=1, col=col)
            fig.add_trace(line_trace(grid, gate[:, e], f"expert {e}", color(e), showlegend=False), row=2, col=col)
        if panel.get("blend") is not None:
            fig.add_trace(line_trace(grid, panel["blend"], "blend", "black", dash="dot", showlegend=first),
                          row=1, col=col)
    lo, hi = float(np.min(_np(y))), float(np.max(_np(y)))
    fig.update_yaxes(range=[lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)], title_text="y", row=1, col=1)
    fig.update_yaxes(range=[-0.05, 1.05], row=2)
    fig.update_yaxes(title_text="gate g(x)", row=2, col=1)
    fig.update_xaxes(title_text="x", row=2)
    fig.update_layout(title=title)
    return fig
