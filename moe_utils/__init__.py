"""moe_utils: the shared tensor core of the course "Mixture of Experts, from EM to expert parallelism".

Chapters import it as one package, ``import moe_utils as mu``, the way d2l's chapters import d2l.

Shape letters (one glossary for every docstring and for the book's notation page):

    N   samples (data points, or tokens in a sparse layer)
    D   input features per sample
    O   outputs per sample
    F   features an expert is linear in (D for a linear expert, the basis of a Legendre expert)
    E   experts (for a synthetic data set: its regimes, the true experts)
    H   hidden units of a small network
    C   classes, or an expert's capacity in a sparse layer
    K   experts chosen per sample (top-k routing)
    M   routed (token, expert) pairs in a sparse layer (N K, fewer when some are dropped)
    S   posterior samples
    R   ranks (processes) under expert parallelism
    P   parameters of a router, flattened
    G   grid or quadrature points
    B   data sets trained side by side (a stack of independent models, chapter 6)
    J   models trained at once in one stack (jobs; chapter 6)

Modules:
    bayes        Bayesian MoE: parameter groups bound by name, the ELBO, NUTS reference, bands
    data         1-D regression data sets and their best achievable test scores
    data2d       2-D data sets (the classification blobs, the curves) and their best values
    mixture      mixtures in log space: densities, E-step, mixture likelihood, blend, losses
    experts      stacked experts (leading axis E): Linear, Legendre, MLP, with a functional call
    routing      router networks (logits) and routing rules (a ``Routing`` tuple)
    likelihoods  Gaussian and Categorical heads, with their closed-form M-steps
    moe          MixtureOfExperts: the one model EM fills and gradient training trains
    topk         sparse routing rules: top-k, Switch, noisy top-k, DeepSeek-V3, expert choice
    balance      the auxiliary losses of sparse routing: load balance, CV^2, router z-loss
    dispatch     tokens to experts and back: dense reference, capacity-padded, sort-based
    sparse       SparseMoE: the sparse layer (x (N, D) -> (N, D)); E = 1 is a dense FFN
    parallel     torch.distributed exchanges (counts, an all-to-all with autograd) and R local workers
    expert_parallel  the sparse layer on R ranks (E / R experts each); workers, a torchrun entry point
    communication  bytes and time of the exchanges: counted, expected, alpha-beta model
    solvers      weighted least squares, batched IRLS, Gauss-Newton for routers
    em           the EM skeleton: E-step, M-step, starts, fit with tolerance and warnings
    estimators   MixtureOfLinearExperts, MixtureOfLogisticExperts (scikit-learn style)
    autoencoder  autoencoder experts, the mixture of them, the atlas it codes points with
    stack        many independent autoencoder mixtures trained as one (stacked tensors)
    charts       mixtures of linear charts (probabilistic PCA) fitted by EM in closed form
    train        one gradient training loop (full or mini-batch, early stopping, tqdm)
    metrics      MSE/NLL, accuracy/NLL/calibration
    runtime      ``device("auto")``, ``seed``, ``precise_dtype``
    plots        plotting setup and the course's figures (imported on first use: a worker
                 process that never draws never loads plotly or matplotlib)

``plots``, ``expert_parallel`` and ``communication`` are imported on first use (``mu.plots``...):
``python -m moe_utils.expert_parallel`` (the torchrun entry point) must not find its own module
already imported by the package.
"""

import importlib

from . import (autoencoder, balance, bayes, charts, data, data2d, dispatch, em, estimators, experts, likelihoods,
               metrics, mixture, moe, parallel, routing, runtime, solvers, sparse, stack, topk, train)
from .em import ConvergenceWarning
from .estimators import MixtureOfLinearExperts, MixtureOfLogisticExperts
from .metrics import Scores, scores
from .mixture import competitive_loss, cooperative_loss
from .moe import MixtureOfExperts
from .routing import Routing
from .runtime import device, seed
from .sparse import SparseMoE

__version__ = "0.1.0"

__all__ = ["ConvergenceWarning", "MixtureOfExperts", "MixtureOfLinearExperts", "MixtureOfLogisticExperts",
           "Routing", "Scores", "SparseMoE", "autoencoder", "balance", "bayes", "charts", "communication",
           "competitive_loss", "cooperative_loss", "data", "data2d", "device", "dispatch", "em", "estimators",
           "expert_parallel", "experts", "likelihoods", "metrics", "mixture", "moe", "parallel", "plots", "routing",
           "runtime", "scores", "seed", "solvers", "sparse", "stack", "topk", "train"]


_LAZY = ("plots", "expert_parallel", "communication")


def __getattr__(name: str):
    if name in _LAZY:  # plotly and matplotlib take a second to import; see the docstring for the others
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
