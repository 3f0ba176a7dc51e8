"""A small training loop shared by the gradient-trained chapters.

``fit(model, loss, x, y)`` runs full-batch or mini-batch training with any optimiser, keeps
the parameters with the best held-out loss when a validation split is given (early stopping),
shows a ``tqdm`` progress bar, and returns the loss history. ``loss(model, x, y)`` returns a
scalar tensor, such as ``mu.competitive_loss``, or a pair (scalar, {name: scalar}) whose named
values (an auxiliary loss, the dropped-token fraction, ...) are logged per epoch.
``fit_many(models, loss, xs, ys)`` trains several small models of one shape at once, each on
its own data, exactly as full-batch ``fit`` would train each.

>>> import torch, moe_utils as mu
>>> x = torch.linspace(-1, 1, 64)[:, None]
>>> model = mu.MixtureOfExperts.linear(1, 1, 2)
>>> history = mu.train.fit(model, mu.cooperative_loss, x, 2 * x, epochs=50, progress=False)
>>> len(history.loss)
50
"""

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import warnings

import torch
from tqdm import TqdmWarning

with warnings.catch_warnings():  # without ipywidgets, tqdm.auto warns and draws text bars: fine
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

from . import _checks as checks

__all__ = ["History", "anneal", "fit", "fit_many"]


@dataclass
class History:
    """Per-epoch training loss, validation loss when a validation split was given, and the
    values a loss logs (``logs[name]``, one per epoch, the mean over its mini-batches)."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    logs: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None  # the epoch whose parameters were kept (early stopping)
    seconds: float = 0.0


def anneal(start: float, end: float, epochs: int) -> Callable[[int], float]:
    """A geometric schedule from ``start`` at epoch 0 to ``end`` at the last epoch."""
    start = checks.finite_float("start", start, 0.0, low_open=True)
    end = checks.finite_float("end", end, 0.0, low_open=True)
    epochs = checks.positive_int("epochs", epochs)
    return lambda epoch: start * (end / start) ** (min(epoch, epochs - 1) / max(epochs - 1, 1))


def fit(model: torch.nn.Module, loss: Callable, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1000,
        lr: float = 0.01, lr_end: float | None = None, optimizer: Callable | None = None,
        batch_size: int | None = None,
        x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None, patience: int | None = None,
        callback: Callable[[int, torch.nn.Module], None] | None = None, seed: int = 0,
        progress: bool = True, desc: str = "training") -> History:
    """Train ``model`` on (x, y); returns a ``History``.

    lr, lr_end : learning rate, decayed geometrically to ``lr_end`` at the last epoch if given.
    optimizer : a function of the parameters that returns a ``torch.optim.Optimizer``
        (default: Adam with learning rate ``lr``).
    batch_size : ``None`` for full-batch steps, else mini-batches in a seeded random order.
    x_val, y_val, patience : a held-out split; the parameters with the lowest validation loss are
        restored at the end, and training stops after ``patience`` epochs without improvement.
    callback : called as ``callback(epoch, model)`` before every epoch (e.g. to anneal a
        temperature).
    """
    epochs = checks.positive_int("epochs", epochs)
    lr = checks.finite_float("lr", lr, 0.0, low_open=True)
    _check_data(x=x, y=y)
    n = checks.same_length(x=x, y=y)
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val must be given together")
    if x_val is not None:
        _check_data(x_val=x_val, y_val=y_val)
        checks.same_length(x_val=x_val, y_val=y_val)
    if patience is not None:
        patience = checks.positive_int("patience", patience, minimum=0)
        if x_val is None:
            raise ValueError("patience needs a validation split (x_val, y_val)")
    batch = n if batch_size is None else checks.positive_int("batch_size", batch_size)
    opt = optimizer(model.parameters()) if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    schedule = anneal(lr, lr_end, epochs) if lr_end is not None else None
    gen = torch.Generator().manual_seed(checks.seed(seed))
    history, best_state, best_val, waited = History(), None, math.inf, 0
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    t0 = time.perf_counter()
    for epoch in bar:
        if callback is not None:
            callback(epoch, model)
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = schedule(epoch)
        model.train()
        order = torch.randperm(n, generator=gen).to(x.device) if batch < n else None
        total, logged = 0.0, {}
        for i in range(0, n, batch):
            idx = order[i:i + batch] if order is not None else slice(None)
            opt.zero_grad()
            value, logs = _split(loss(model, x[idx], y[idx]))
            value.backward()
            opt.step()
            share = min(batch, n - i) / n
            total += value.item() * share
            for name, v in logs.items():
                logged[name] = logged.get(name, 0.0) + float(v.detach() if torch.is_tensor(v) else v) * share
        history.loss.append(total)
        for name, v in logged.items():
            history.logs.setdefault(name, []).append(v)
        if x_val is not None:
            model.eval()
            with torch.no_grad():
                val = _split(loss(model, x_val, y_val))[0].item()
            history.val_loss.append(val)
            if val < best_val:
                best_val, best_state, history.best_epoch, waited = val, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                waited += 1
            if patience is not None and waited > patience:
                break
        if progress and epoch % 25 == 0:
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}", refresh=False)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - t0
    return history


def _split(value) -> tuple[torch.Tensor, dict]:
    """A loss's return value as (scalar, logs)."""
    return value if isinstance(value, tuple) else (value, {})


def _check_data(**tensors: torch.Tensor) -> None:
    """Each must be a tensor with a sample axis and no NaN or inf (checked once, before training)."""
    for name, t in tensors.items():
        if not torch.is_tensor(t) or t.ndim == 0:
            raise TypeError(f"{name} must be a tensor of shape (N, ...), got {type(t).__name__}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")


class _LossOf(torch.nn.Module):
    """``loss(model, x, y)`` as a module whose forward ``torch.func.functional_call`` can run with
    another model's tensors in place of ``model``'s."""

    def __init__(self, model: torch.nn.Module, loss: Callable):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x, y):
        return self.loss(self.model, x, y)


def fit_many(models: list, loss: Callable, xs: torch.Tensor, ys: torch.Tensor, *, epochs: int = 1000,
             lr: float = 0.01, lr_end: float | None = None,
             callback: Callable[[int, torch.nn.Module], None] | None = None, progress: bool = True,
             desc: str = "training") -> list[History]:
    """Train several models of one architecture at once, models[i] on (xs[i], ys[i]): what
    full-batch ``fit`` with Adam does to each, in one batched computation (``torch.func.vmap``),
    so that a few small models cost little more than one. Returns one ``History`` per model.

    models : modules that differ only in their tensors (parameters and buffers); everything
        else, such as a routing rule's temperature, is read from ``models[0]``.
    xs, ys : the data sets stacked, (len(models), N, ...) each, all of one size N.
    loss : ``loss(model, x, y)`` -> a scalar tensor (no logs); random draws in it (a Gumbel rule)
        differ between the models. ``vmap`` runs it once for all models, so it may not branch on
        the data's values in Python (the Categorical head's label check does: classifiers go
        through ``fit``).
    lr, lr_end, callback : as in ``fit``; ``callback(epoch, model)`` is called for every model.

    >>> import torch, moe_utils as mu
    >>> x = torch.linspace(-1, 1, 64)[None, :, None].expand(2, -1, -1)    # 2 data sets
    >>> models = [mu.MixtureOfExperts.linear(1, 1, 2, seed=s) for s in (0, 1)]
    >>> histories = mu.train.fit_many(models, mu.competitive_loss, x, 2 * x[..., 0], epochs=50, progress=False)
    >>> len(histories), len(histories[0].loss)
    (2, 50)
    """
    from torch.func import functional_call, stack_module_state, vmap  # imported on first use

    if not isinstance(models, (list, tuple)) or not models:
        raise TypeError("models must be a non-empty list of modules")
    epochs = checks.positive_int("epochs", epochs)
    lr = checks.finite_float("lr", lr, 0.0, low_open=True)
    _check_data(xs=xs, ys=ys)
    if xs.ndim < 2 or ys.ndim < 2 or not len(models) == xs.shape[0] == ys.shape[0] or xs.shape[1] != ys.shape[1]:
        raise ValueError(f"xs and ys must have shape ({len(models)}, N, ...), one data set per model, got "
                         f"{tuple(xs.shape)} and {tuple(ys.shape)}")
    params, buffers = stack_module_state(list(models))  # leaves with a leading model axis; raise if shapes differ
    template = _LossOf(models[0], loss)
    state = ({"model." + k: v for k, v in params.items()}, {"model." + k: v for k, v in buffers.items()})
    batched = vmap(lambda p, b, x, y: functional_call(template, (p, b), (x, y)), randomness="different")
    opt = torch.optim.Adam(list(params.values()), lr=lr, fused=True)  # one kernel per step: ~7% of a step here
    schedule = anneal(lr, lr_end, epochs) if lr_end is not None else None
    histories = [History() for _ in models]
    t0 = time.perf_counter()
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        for model in models:
            if callback is not None:
                callback(epoch, model)
        if schedule is not None:
            opt.param_groups[0]["lr"] = schedule(epoch)
        template.train()
        opt.zero_grad()
        values = batched(*state, xs, ys)  # one loss per model
        values.sum().backward()           # model m's parameters get its own loss's gradient
        opt.step()
        for history, value in zip(histories, values.tolist()):
            history.loss.append(value)
    with torch.no_grad():  # the trained tensors back into each model (the buffers did not change)
        for m, model in enumerate(models):
            for name, t in params.items():
                model.get_parameter(name).copy_(t[m])
            model.eval()
    for history in histories:
        history.seconds = time.perf_counter() - t0
    return histories
