"""moe_utils: the shared tensor core of the course "Mixture of Experts, from EM to expert parallelism".

Chapters import it as one package, ``import moe_utils as mu``, the way d2l's chapters import d2l.

Shape letters (one glossary for every docstring and for the book's notation page):

    N   samples (data points, or tokens in a sparse layer)
    D   input features per sample
    O   outputs per sample
    E   experts (for a synthetic data set: its regimes, the true experts)
    H   hidden units of a small network
    C   classes
    K   experts chosen per sample (top-k routing)
    S   posterior samples
    G   grid or quadrature points

Modules:
    checks    input validation with errors that name the argument
    runtime   ``device("auto")`` and ``seed``
    data      synthetic data sets and their best achievable test scores
    mixture   Gaussian mixtures in log space (mean, log density, responsibilities)
    experts   stacked experts: closed-form linear fits, and nn.Modules with an expert axis
    gates     gates as nn.Modules returning log-probabilities (constant, softmax, MLP)
    em        the EM steps for a mixture of linear experts, as pure functions
    mole      MixtureOfLinearExperts, the EM estimator built from those steps
    moe       MixtureOfExperts, an nn.Module for gradient training, and its two losses
    train     a small training loop (full or mini-batch, early stopping, progress bar)
    classify  classification: the blobs data set, a mixture of logistic experts (EM and gradient)
    metrics   test MSE and NLL; accuracy, NLL and calibration of classifiers
    plots     plotting setup (plotly renderer, colours) and the course's figures
"""

from . import checks, classify, data, em, experts, gates, metrics, mixture, moe, mole, plots, runtime, train
from .metrics import Scores, scores
from .em import ConvergenceWarning
from .mole import MixtureOfLinearExperts
from .runtime import device, seed

__version__ = "0.1.0"

__all__ = ["ConvergenceWarning", "MixtureOfLinearExperts", "Scores", "checks", "classify", "data", "device", "em",
           "experts", "gates", "metrics", "mixture", "moe", "mole", "plots", "runtime", "scores", "seed", "train"]
