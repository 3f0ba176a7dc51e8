"""Load balance of a sparse layer: the auxiliary losses and what they measure.

A sparse layer sends each of N tokens to K of E experts. If the router favours a few experts,
the others get no tokens and no training, and a capacity limit drops the overflow. The losses
below, added to the training loss with a small weight, push the router towards an even load;
each is a plain function of the router's outputs (returned by the routing rules of ``topk`` in
their ``aux`` dict, never stored globally):

- ``switch_balance``: E sum_i f_i P_i (Fedus et al., 2022), f_i the fraction of assignments that
  go to expert i (not differentiable), P_i the mean router probability of i (differentiable);
  1 at a uniform load, E when every token picks one expert;
- ``cv_squared`` of the ``importance`` (the summed gate weights per expert) and of the ``load``
  (tokens per expert; ``smooth_load`` for noisy top-k, differentiable) (Shazeer et al., 2017);
- ``z_loss``: the mean squared log-partition of the router logits (Zoph et al., 2022), which
  keeps the logits small and the softmax numerically safe.

>>> import torch, moe_utils as mu
>>> probs = torch.full((4, 2), 0.5)                            # a uniform router, N = 4, E = 2
>>> mu.balance.switch_balance(probs, torch.tensor([[0], [1], [0], [1]]))
tensor(1.)
>>> mu.balance.cv_squared(torch.tensor([3.0, 1.0]))            # variance 1 over mean^2 4
tensor(0.2500)
"""

import torch

__all__ = ["counts", "cv_squared", "importance", "smooth_load", "switch_balance", "z_loss"]


def counts(chosen: torch.Tensor, n_experts: int, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Assignments per expert (E,) (float) of chosen (N, K); only the ``kept`` (N, K) ones if given."""
    flat = chosen.reshape(-1) if kept is None else chosen[kept]
    return torch.bincount(flat, minlength=n_experts).to(torch.get_default_dtype())


def switch_balance(probs: torch.Tensor, chosen: torch.Tensor, load: torch.Tensor | None = None) -> torch.Tensor:
    """E sum_i f_i P_i: probs (N, E) the router's probabilities, chosen (N, K) the experts picked
    (``load`` (E,): their ``counts``, if already known).

    f_i = (assignments to i) / (N K) sums to one; P_i = mean_n probs_ni. Only P carries a gradient.
    Hugging Face's ``load_balancing_loss_func`` (Mixtral) sums f over the K slots: K times this.
    """
    n_experts = probs.shape[-1]
    f = (counts(chosen, n_experts) if load is None else load).to(probs) / chosen.numel()
    return n_experts * (f * probs.mean(0)).sum()


def cv_squared(values: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """The squared coefficient of variation var / mean^2 of values (E,) (population variance):
    0 for equal values, E - 1 when one of E holds everything."""
    values = values.float() if not values.is_floating_point() else values
    return values.var(unbiased=False) / (values.mean() ** 2 + eps)


def importance(weights: torch.Tensor, chosen: torch.Tensor, n_experts: int) -> torch.Tensor:
    """The importance of each expert (E,): the sum over tokens of its combine weight; weights and
    chosen (N, K). Differentiable through the weights."""
    return weights.new_zeros(n_experts).index_add_(0, chosen.reshape(-1), weights.reshape(-1))


def smooth_load(clean: torch.Tensor, noisy: torch.Tensor, noise_sd: torch.Tensor, k: int) -> torch.Tensor:
    """Shazeer et al.'s differentiable load (E,): sum_n P(expert i is in the top k of token n).

    clean, noisy, noise_sd (N, E): the logits without and with noise, and the noise's standard
    deviation. Expert i stays in the top k if its noisy logit beats the k-th largest of the
    *other* experts' noisy logits, t_ni; with fresh noise that happens with probability
    Phi((clean_ni - t_ni) / noise_sd_ni). t_ni is the (k+1)-th largest noisy logit if i is in the
    top k now, else the k-th. Needs k < E.
    """
    if not 1 <= k < clean.shape[-1]:
        raise ValueError(f"smooth_load needs 1 <= k < E = {clean.shape[-1]}, got k = {k}")
    top = noisy.topk(k + 1, dim=-1).values                                     # (N, K + 1)
    inside = noisy > top[:, k:k + 1]                                           # in the top k now
    threshold = torch.where(inside, top[:, k:k + 1], top[:, k - 1:k])
    normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
    return normal.cdf((clean - threshold) / noise_sd).sum(0)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """The router z-loss mean_n (log sum_e exp logits_ne)^2 of logits (N, E) (Zoph et al., 2022)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()
