import plotly.io as pio
import pytest
import torch

import moe_utils as mu


def test_setup_picks_a_renderer_the_book_can_show():
    mu.plots.setup()
    assert pio.renderers.default == "notebook_connected"


def test_traces_split_by_regime_and_sort_lines():
    x, y, z = mu.data.roof().sample(300, seed=0)
    traces = mu.plots.data_traces(x, y, z)
    assert [t.name for t in traces] == ["regime 0", "regime 1", "regime 2"]
    assert sum(len(t.x) for t in traces) == 300
    line = mu.plots.line_trace(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([4.0, 0.0, 1.0]), "f")
    assert list(line.x) == [0.0, 1.0, 2.0] and list(line.y) == [0.0, 1.0, 4.0]
    fig = mu.plots.subplots(["a", "b", "c", "d"], cols=3)
    assert fig.layout.height == 2 * 300 + 140


class _ThreeClasses:
    """A model without a gate whose predict_proba has three columns."""

    def predict_proba(self, x):
        return torch.full((len(x), 3), 1 / 3)


def test_decision_figure_refuses_more_than_two_classes():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    net = mu.MixtureOfExperts.linear(2, 2, 2, likelihood="categorical")
    fitted = mu.MixtureOfLogisticExperts(2, n_init=1, max_iter=5).fit(x, y)
    figure = mu.plots.decision_figure({"module": net, "estimator": fitted}, x, y, resolution=20)
    assert {t.name for t in figure.data} >= {"expert 0", "expert 1", "model's boundary"}
    for model in (mu.MixtureOfExperts.linear(2, 3, 2, likelihood="categorical"), _ThreeClasses()):
        with pytest.raises(ValueError, match=r"models\['three'\]\.predict_proba must return \(G, 2\) probabilities "
                                             r"of 2 classes .*got \(400, 3\)"):
            mu.plots.decision_figure({"two": net, "three": model}, x, y, resolution=20)


def test_confidence_figure_draws_top_label_reliability_with_its_ece():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    rel = mu.metrics.reliability(probs, torch.tensor([0, 1, 1, 1]), n_bins=4)
    fig = mu.plots.confidence_figure({"model": rel})
    assert fig.layout.yaxis.title.text == "accuracy of the top class"
    assert fig.layout.xaxis2.title.text.startswith("confidence")
    assert f"ECE {rel.ece:.3f}" in fig.data[1].name


def test_graphical_model_draws_three_nodes_two_shaded():
    from matplotlib.patches import Circle

    fig = mu.plots.graphical_model()
    circles = [p for p in fig.axes[0].patches if isinstance(p, Circle)]
    assert len(circles) == 3
    assert sum(c.get_facecolor()[0] < 1 for c in circles) == 2  # x_n and y_n are observed
    assert {t.get_text() for t in fig.axes[0].texts} >= {"$x_n$", "$z_n$", "$y_n$"}


def test_mixture_figure_draws_every_expert_and_gate_per_panel():
    grid = torch.linspace(-2, 2, 11)
    x, y, _ = mu.data.zig().sample(100, seed=0)
    panel = {"experts": torch.stack([grid, -grid], 1), "gate": torch.full((11, 2), 0.5)}
    fig = mu.plots.mixture_figure({"a": panel, "b": {**panel, "blend": torch.zeros(11)}}, x, y, grid)
    names = [t.name for t in fig.data]
    assert names.count("expert 0") == names.count("expert 1") == 4 and names.count("blend") == 1
    assert fig.layout.xaxis3.title.text == "x" and fig.layout.yaxis3.title.text == "gate g(x)"
