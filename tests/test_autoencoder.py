"""Autoencoder experts, their mixture and atlas, the stack of many mixtures, and linear charts."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.decomposition import PCA
from torch import nn

import moe_utils as mu

F64 = torch.float64


def points(name="circle", n=200, seed=0, noise=0.05):
    return mu.data2d.curve(name, noise).sample(n, seed=seed, dtype=F64)[0]


def plain_autoencoder(aes, e: int) -> nn.Module:
    """Expert e of stacked ``Autoencoders`` rebuilt as a plain torch autoencoder (nn.Linear layers)."""
    p = {k: v[e].detach().clone() for k, v in aes.params().items()}
    layers = [nn.Linear(2, aes.n_hidden), nn.ReLU(), nn.Linear(aes.n_hidden, 1),
              nn.Linear(1, aes.n_hidden), nn.ReLU(), nn.Linear(aes.n_hidden, 2)]
    names = ["encoder.w1", "encoder.b1", "encoder.w2", "encoder.b2", "decoder.w1", "decoder.b1", "decoder.w2", "decoder.b2"]
    with torch.no_grad():
        for layer, (w, b) in zip([layers[0], layers[2], layers[3], layers[5]], zip(names[::2], names[1::2])):
            layer.weight.copy_(p[w].T)
            layer.bias.copy_(p[b])
    net = nn.Sequential(*layers).to(F64)
    shift, scale = aes.shift.clone(), aes.scale.clone()
    return lambda x: shift + scale * net((x - shift) / scale), net


# ---------------------------------------------------------------------- stacked autoencoders
def test_shapes_of_codes_reconstructions_and_sampled_parameters():
    aes = mu.autoencoder.Autoencoders(n_hidden=5, n_experts=3, generator=torch.Generator().manual_seed(0)).to(F64)
    x = points(n=7)
    assert aes(x).shape == (7, 3, 2) and aes.encode(x).shape == (7, 3)
    torch.testing.assert_close(aes.decode(aes.encode(x)), aes(x))
    assert aes(x[:, None, :].expand(7, 3, 2)).shape == (7, 3, 2)              # per-expert inputs
    draws = {k: v.expand(4, *v.shape) for k, v in aes.params().items()}       # S = 4 equal draws
    torch.testing.assert_close(aes(x, draws), aes(x).expand(4, 7, 3, 2))
    assert len(aes.select([0, 2])) == 2
    torch.testing.assert_close(aes.select([0, 2])(x), aes(x)[:, [0, 2]])


def test_the_stacked_experts_equal_a_loop_over_separately_built_autoencoders():
    x = points(n=50)
    aes = mu.autoencoder.Autoencoders(n_hidden=6, n_experts=4, shift=x.mean(0), scale=x.std(0),
                                      generator=torch.Generator().manual_seed(1)).to(F64)
    looped = torch.stack([plain_autoencoder(aes, e)[0](x) for e in range(4)], 1)  # (N, E, D)
    torch.testing.assert_close(aes(x), looped)
    for e in range(4):
        torch.testing.assert_close(aes.select([e])(x)[:, 0], looped[:, e])


def test_one_expert_is_the_plain_autoencoder_in_value_and_gradient():
    x = points(n=80)
    model = mu.autoencoder.mixture(1, x=x, seed=3)
    plain, net = plain_autoencoder(model.experts, 0)
    # the blend of one expert is its reconstruction, and the cooperative loss is the plain MSE
    torch.testing.assert_close(model.predict(x), plain(x))
    mse = ((plain(x) - x) ** 2).mean()
    coop = mu.cooperative_loss(model, x, x)
    torch.testing.assert_close(coop, mse)
    # the competitive loss is the Gaussian NLL of the reconstruction error: |x - x_hat|^2 / (2 var) + const
    var = model.likelihood.var.reshape(())
    nll = mu.competitive_loss(model, x, x)
    torch.testing.assert_close(nll, ((plain(x) - x) ** 2).sum(1).mean() / (2 * var) + torch.log(2 * math.pi * var))
    grads = torch.autograd.grad(coop, list(model.experts.parameters()))
    plain_grads = dict(zip(["encoder.w1", "encoder.b1", "encoder.w2", "encoder.b2",
                            "decoder.w1", "decoder.b1", "decoder.w2", "decoder.b2"],
                           torch.autograd.grad(mse, list(net.parameters()))))
    for (name, _), g in zip(model.experts.named_parameters(), grads):
        expected = plain_grads[name].T if name.endswith("w1") or name.endswith("w2") else plain_grads[name]
        torch.testing.assert_close(g[0], expected)


def test_mixture_starts_its_router_on_kmeans_regions():
    x = points(n=400, noise=0.01)
    model = mu.autoencoder.mixture(4, x=x, seed=0)
    assert model(x).experts.dtype == F64
    chosen = mu.autoencoder.atlas(model, x).chosen
    assert mu.autoencoder.experts_used(chosen, 4) == 4                  # every expert owns a region
    labels = mu.em.kmeans(x, 4, torch.Generator().manual_seed(0))
    agree = max((chosen == perm[labels]).double().mean().item()
                for perm in map(torch.tensor, __import__("itertools").permutations(range(4))))
    assert agree > 0.8


def test_atlas_codes_each_point_by_the_routers_choice():
    x = points(n=60)
    model = mu.autoencoder.mixture(3, x=x, seed=0)
    a = mu.autoencoder.atlas(model, x)
    out = model(x)
    torch.testing.assert_close(a.chosen, out.routing.log_probs.argmax(1))
    rows = torch.arange(60)
    torch.testing.assert_close(a.reconstruction, out.experts[rows, a.chosen])
    torch.testing.assert_close(a.code, model.experts.encode(x)[rows, a.chosen])
    assert mu.autoencoder.mse(model, x) == pytest.approx(((a.reconstruction - x) ** 2).sum(1).mean().item())


def test_experts_used_counts_experts_above_a_share():
    chosen = torch.tensor([0] * 98 + [2] * 2)
    assert mu.autoencoder.experts_used(chosen, 4) == 2
    assert mu.autoencoder.experts_used(chosen, 4, share=0.05) == 1


def test_training_a_mixture_on_a_circle_beats_one_autoencoder_tenfold():
    s = mu.data2d.curve("circle", 0.05).split(600, seed=0)
    errors = {}
    for e in (1, 2):
        model = mu.autoencoder.mixture(e, x=s.x_train, seed=0)
        mu.train.fit(model, mu.competitive_loss, s.x_train, s.x_train, epochs=300, lr=0.02, progress=False)
        errors[e] = mu.autoencoder.mse(model, s.x_test)
    assert errors[2] < errors[1] / 10 and errors[2] < 2 * mu.data2d.curve("circle", 0.05).best_mse()


# ---------------------------------------------------------------------- EM with gradient M-steps
def em_history(line_search: bool, lr: float, seed: int = 0):
    x = points(n=300, seed=seed)
    model = mu.autoencoder.mixture(3, x=x, seed=seed)
    resp = mu.em.init_responsibilities(x, x, 3, "kmeans", seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = mu.em.fit(model, x, x, resp, max_iter=12, tol=0.0, gradient_steps=10, lr=lr, line_search=line_search)
    return np.array(run.history), [w for w in caught if issubclass(w.category, mu.ConvergenceWarning)]


@pytest.mark.parametrize("seed", [0, 1])
def test_em_with_a_line_search_never_decreases_its_objective(seed):
    history, caught = em_history(line_search=True, lr=0.05, seed=seed)
    assert (np.diff(history) >= -1e-12).all() and not [w for w in caught if "decreased" in str(w.message)]
    assert history[-1] > history[0] + 0.5                                    # and it does climb


def test_without_the_line_search_big_gradient_steps_can_lower_the_objective():
    history, caught = em_history(line_search=False, lr=0.5)
    assert (np.diff(history) < 0).any() and any("decreased" in str(w.message) for w in caught)


def test_the_gaussian_head_ties_its_variance_and_keeps_the_old_default():
    x = points(n=100)
    experts = mu.autoencoder.Autoencoders(n_experts=2, generator=torch.Generator().manual_seed(0)).to(F64)
    resp = torch.softmax(torch.randn(100, 2, generator=torch.Generator().manual_seed(1), dtype=F64), 1)
    sq = (x[:, None, :] - experts(x)) ** 2                                   # (N, E, D)
    per = torch.einsum("ne,ned->ed", resp, sq) / resp.sum(0)[:, None]       # (E, D)
    expected = {"none": per, "outputs": per.mean(1, keepdim=True),
                "all": (torch.einsum("ne,ned->", resp, sq) / (100 * 2)).reshape(1, 1)}
    for tied, var in expected.items():
        head = mu.likelihoods.Gaussian(2, 2, tied=tied).to(F64)
        head.m_step(experts, x, x, resp, solve_experts=False)
        torch.testing.assert_close(head.var, var)
        log_lik = head.log_lik(experts(x), x)
        torch.testing.assert_close(log_lik, mu.mixture.gaussian_log_prob(x[:, None], experts(x), var).sum(-1))
    assert mu.likelihoods.Gaussian(3, 2).log_var.shape == (3, 2)           # the default is untied
    with pytest.raises(ValueError, match="unknown tied 'experts'"):
        mu.likelihoods.Gaussian(2, 2, tied="experts")


# ---------------------------------------------------------------------- the stack
def stack_case(dtype=F64):
    x = torch.stack([mu.data2d.curve(c).sample(120, seed=0, dtype=dtype)[0] for c in ("circle", "figure8")], 1)
    sizes, data = (1, 2, 4, 3), (0, 0, 1, 1)
    models = [mu.autoencoder.mixture(e, x=x[:, d], seed=i) for i, (e, d) in enumerate(zip(sizes, data))]
    kinds = ["competitive", "cooperative", "competitive", "cooperative"]
    return x, models, list(data), kinds


def test_the_stack_computes_each_models_own_loss_and_gradient():
    x, models, data, kinds = stack_case()
    stack = mu.stack.Stack(models, data, kinds)
    losses = stack(x)
    for m, (model, d, kind) in enumerate(zip(models, data, kinds)):
        loss = (mu.competitive_loss if kind == "competitive" else mu.cooperative_loss)(model, x[:, d], x[:, d])
        torch.testing.assert_close(losses[m], loss)
        grads = torch.autograd.grad(loss, list(model.experts.parameters()), allow_unused=True)
        stacked = torch.autograd.grad(losses.sum(), list(stack.experts.parameters()), retain_graph=True)
        start = sum(stack.sizes[:m])
        for g, gs in zip(grads, stacked):
            torch.testing.assert_close(gs[start:start + model.n_experts], g)


def test_training_the_stack_equals_training_each_model_alone():
    x, models, data, kinds = stack_case()
    stack = mu.stack.Stack(models, data, kinds)
    mu.train.fit(stack, mu.stack.total_loss, x, x, epochs=25, lr=0.02, progress=False)
    for m, (model, d, kind) in enumerate(zip(models, data, kinds)):
        loss = mu.competitive_loss if kind == "competitive" else mu.cooperative_loss
        mu.train.fit(model, loss, x[:, d], x[:, d], epochs=25, lr=0.02, progress=False)
        trained = stack.model(m)
        assert trained.n_experts == model.n_experts
        for (name, p), q in zip(trained.named_parameters(), model.parameters()):
            torch.testing.assert_close(p, q, atol=1e-10, rtol=1e-8, msg=name)


def test_the_stack_trains_on_minibatches_of_points():
    x, models, data, kinds = stack_case(torch.float32)
    stack = mu.stack.Stack(models, data, kinds)
    before = stack(x).detach()
    history = mu.train.fit(stack, mu.stack.total_loss, x, x, epochs=20, lr=0.02, batch_size=40, progress=False)
    assert len(history.loss) == 20 and (stack(x).detach() < before).all()


# ---------------------------------------------------------------------- linear charts (PPCA)
def test_one_linear_chart_is_pca():
    x = points("figure8", n=500)
    charts = mu.charts.LinearCharts(1).fit(x)
    pca = PCA(n_components=1).fit(x.numpy())
    n = len(x)
    cos = abs((charts.directions_[0] * torch.from_numpy(pca.components_[0])).sum())
    assert cos == pytest.approx(1, abs=1e-12)
    torch.testing.assert_close(charts.means_[0], x.mean(0))
    # scikit-learn divides by N - 1, maximum likelihood by N
    assert charts.noise_var_[0].item() == pytest.approx(pca.noise_variance_ * (n - 1) / n, rel=1e-10)
    assert (charts.loadings_[0] ** 2).sum() + charts.noise_var_[0] == pytest.approx(pca.explained_variance_[0] * (n - 1) / n)
    a = charts.atlas(x)
    projection = torch.from_numpy(pca.inverse_transform(pca.transform(x.numpy())))
    torch.testing.assert_close(a.reconstruction, projection)


def test_linear_charts_density_is_a_gaussian_mixture_and_em_climbs():
    x = points("spiral", n=600)
    charts = mu.charts.LinearCharts(4, seed=0).fit(x)
    history = np.array(charts.log_likelihood_history_)
    assert (np.diff(history) >= -1e-10).all() and len(history) > 2
    cov = charts.loadings_[:, :, None] * charts.loadings_[:, None, :] + charts.noise_var_[:, None, None] * torch.eye(2, dtype=F64)
    density = sum(w.item() * stats.multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
                  for w, m, c in zip(charts.weights_, charts.means_, cov))
    np.testing.assert_allclose(charts.log_prob(x).numpy(), np.log(np.asarray(density)), rtol=1e-10)
    assert charts.log_prob(x).mean().item() == pytest.approx(history[-1], abs=1e-12)


def test_more_linear_charts_fit_a_circle_better():
    s = mu.data2d.curve("circle", 0.02).split(1000, seed=0, dtype=F64)
    errors = [mu.charts.LinearCharts(e, seed=0).fit(s.x_train).mse(s.x_test) for e in (1, 2, 4, 8)]
    assert errors[0] > 0.4 and all(b < a for a, b in zip(errors, errors[1:]))
    # a chord of an arc of angle 2 pi / 8 strays at most 1 - cos(pi / 8) from the circle
    assert errors[-1] < (1 - math.cos(math.pi / 8)) ** 2 + 2 * 0.02**2


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, error, match", [
    (lambda: mu.autoencoder.mixture(0), ValueError, "n_experts must be >= 1"),
    (lambda: mu.autoencoder.mixture(2.0), TypeError, "n_experts must be an integer"),
    (lambda: mu.autoencoder.Autoencoders(n_hidden=0), ValueError, "n_hidden must be >= 1"),
    (lambda: mu.autoencoder.Autoencoders(activation="sigmoid"), ValueError, "unknown activation"),
    (lambda: mu.autoencoder.mixture(2, x=torch.tensor([[0.0, math.nan]] * 5)), ValueError, "x contains NaN"),
    (lambda: mu.autoencoder.atlas(mu.autoencoder.mixture(2), torch.zeros(5, 3)), ValueError, r"x must have shape \(N, 2\)"),
    (lambda: mu.autoencoder.atlas(mu.autoencoder.mixture(2), torch.full((5, 2), math.nan)), ValueError, "x contains NaN"),
    (lambda: mu.autoencoder.mixture(2).experts.decode(torch.zeros(5, 3)), ValueError, r"codes must have shape \(N, 2\)"),
    (lambda: mu.autoencoder.experts_used(torch.zeros(3, dtype=torch.long), 0), ValueError, "n_experts must be >= 1"),
    (lambda: mu.autoencoder.mixture(2, x=torch.randn(5, 2), start=torch.ones(5, 3)), ValueError, r"start must have shape \(N, 2\)"),
    (lambda: mu.charts.LinearCharts(2).fit(torch.randn(9, 2), start=torch.ones(8, 2)), ValueError, "start must have shape"),
    (lambda: mu.stack.Stack([], []), TypeError, "non-empty list"),
    (lambda: mu.stack.Stack([mu.MixtureOfExperts.linear(2, 2, 2)], [0]), TypeError, "built by autoencoder.mixture"),
    (lambda: mu.stack.Stack([mu.autoencoder.mixture(2)], [0, 1]), ValueError, "one entry per model"),
    (lambda: mu.stack.Stack([mu.autoencoder.mixture(2)], [0], "adversarial"), ValueError, "unknown losses"),
    (lambda: mu.stack.Stack([mu.autoencoder.mixture(2), mu.autoencoder.mixture(2, n_hidden=3)], [0, 0]),
     ValueError, "a stack holds one architecture"),
    (lambda: mu.stack.Stack([mu.autoencoder.mixture(2)], [0])(torch.zeros(5, 2)), ValueError, r"x must have shape \(N, B, 2\)"),
    (lambda: mu.stack.Stack([mu.autoencoder.mixture(2)], [1])(torch.zeros(5, 1, 2)), ValueError, "x holds 1"),
    (lambda: mu.stack.Stack([mu.autoencoder.mixture(2)], [0]).model(1), ValueError, "m must be below"),
    (lambda: mu.charts.LinearCharts(0), ValueError, "n_experts must be >= 1"),
    (lambda: mu.charts.LinearCharts(3).fit(torch.zeros(4, 2)), ValueError, "at least 2 samples per chart"),
    (lambda: mu.charts.LinearCharts(1).fit(torch.zeros(4, 1)), ValueError, "at least 2 features"),
    (lambda: mu.charts.LinearCharts(1).mse(torch.zeros(4, 2)), RuntimeError, "call fit"),
])
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_given_start_is_the_kmeans_start_when_it_is_the_same():
    x = points("figure8", n=300)
    start = mu.em.init_responsibilities(x, x, 3, "kmeans", seed=4)
    a, b = mu.autoencoder.mixture(3, x=x, seed=4), mu.autoencoder.mixture(3, x=x, seed=4, start=start)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    fitted = mu.charts.LinearCharts(3, seed=4).fit(x), mu.charts.LinearCharts(3, seed=4).fit(x, start=start)
    torch.testing.assert_close(fitted[0].means_, fitted[1].means_)
