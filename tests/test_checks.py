import numpy as np
import pytest
import torch

from moe_utils import _checks as checks


def test_tensor_keeps_float_dtype_and_converts_the_rest():
    assert checks.tensor("x", torch.zeros(3, dtype=torch.float64)).dtype == torch.float64
    assert checks.tensor("x", np.zeros(3, dtype=np.float32)).dtype == torch.float32
    assert checks.tensor("x", [1, 2, 3]).dtype == torch.get_default_dtype()
    assert checks.tensor("x", [1, 2], dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("bad, error, words", [
    ("abc", TypeError, "x must be a tensor"),
    (None, TypeError, "x must be a tensor"),
    ([1.0, float("nan")], ValueError, "x contains NaN or inf"),
    ([1.0, float("inf")], ValueError, "x contains NaN or inf"),
    (np.array([1 + 2j]), TypeError, "x must be real"),
    ([[1, 2], [3]], TypeError, "x must be a tensor"),
])
def test_tensor_rejects_bad_input_by_name(bad, error, words):
    with pytest.raises(error, match=words):
        checks.tensor("x", bad)


def test_vector_and_matrix_shapes():
    assert checks.vector("y", torch.zeros(4, 1)).shape == (4,)
    assert checks.matrix("x", torch.zeros(4)).shape == (4, 1)
    with pytest.raises(ValueError, match=r"y must have shape \(N,\) or \(N, 1\), got \(4, 2\)"):
        checks.vector("y", torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(N,\) or \(N, D\), got \(2, 2, 2\)"):
        checks.matrix("x", torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="y must have 3 entries"):
        checks.vector("y", torch.zeros(4), n=3)
    with pytest.raises(ValueError, match=r"x must have 2 feature\(s\)"):
        checks.matrix("x", torch.zeros(4, 3), d=2)


def test_same_length_names_both_arguments():
    assert checks.same_length(x=torch.zeros(3), y=torch.zeros(3)) == 3
    with pytest.raises(ValueError, match="x has 3, y has 4"):
        checks.same_length(x=torch.zeros(3), y=torch.zeros(4))


def test_positive_int():
    assert checks.positive_int("n", 3) == 3
    assert checks.positive_int("n", np.int64(3)) == 3
    with pytest.raises(ValueError, match="n_experts must be >= 1, got 0"):
        checks.positive_int("n_experts", 0)
    with pytest.raises(TypeError, match="n must be an integer"):
        checks.positive_int("n", 2.0)
    with pytest.raises(TypeError, match="n must be an integer"):
        checks.positive_int("n", True)


def test_finite_float_ranges():
    assert checks.finite_float("t", 1) == 1.0
    with pytest.raises(ValueError, match=r"temperature must be in \(0.0, inf\], got 0.0"):
        checks.finite_float("temperature", 0.0, 0.0, low_open=True)
    with pytest.raises(ValueError, match="noise must be finite, got nan"):
        checks.finite_float("noise", float("nan"))
    with pytest.raises(TypeError, match="noise must be a number"):
        checks.finite_float("noise", "0.1")


def test_choice_lists_the_options():
    assert checks.choice("gate", "mlp", ["softmax", "mlp"]) == "mlp"
    with pytest.raises(ValueError, match="unknown gate 'tree'; expected one of 'softmax', 'mlp'"):
        checks.choice("gate", "tree", ["softmax", "mlp"])
