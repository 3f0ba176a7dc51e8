import plotly.io as pio
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
