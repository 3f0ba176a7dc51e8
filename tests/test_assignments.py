"""The graded assignments: built by otter-grader, solutions pass, student versions and planted wrong
answers fail, and nothing secret reaches the students.

Most checks grade in-process (the notebook's cells run in this interpreter, then otter's test files
run on its namespace), the way otter does but without a kernel per notebook; every assignment's
solution is also graded once end to end by ``otter run`` against its autograder zip.
"""

import ast
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "book"))
import assignments  # noqa: E402

pytestmark = pytest.mark.slow

MASTERS = sorted(assignments.MASTERS.glob("*.ipynb"))

# A plausible wrong answer per question: (assignment, question, the solution cell's first line, wrong cell).
WRONG = [
    ("02_em_by_hand", "q1_e_step", "def e_step(", '''def e_step(log_gates, log_lik):
    joint = torch.exp(log_gates) * torch.exp(log_lik)  # exp before normalising: underflows
    return joint / joint.sum(-1, keepdim=True), torch.log(joint.sum(-1))'''),
    ("02_em_by_hand", "q2_m_step", "def fit_expert(", '''def fit_expert(x, y, r):
    w = r / r.sum()
    mx, my = (w * x).sum(), (w * y).sum()
    slope = (w * (x - mx) * (y - my)).sum() / (w * (x - mx) ** 2).sum()
    intercept = my - slope * mx
    var = ((y - slope * x - intercept) ** 2).mean()  # unweighted: every sample counts for every expert
    return slope, intercept, var'''),
    ("02_em_by_hand", "q3_em", "def run_em(", '''def run_em(x, y, resp, n_iter=30):
    history = []
    for _ in range(n_iter):
        fits = [fit_expert(x, y, resp[:, e]) for e in range(2)]
        slopes = torch.stack([f[0] for f in fits])
        intercepts = torch.stack([f[1] for f in fits])
        var = torch.ones(2, dtype=x.dtype)  # the variance fixed at 1
        log_gates = torch.log(resp.mean(0)).expand(len(x), 2)
        log_lik = mu.mixture.gaussian_log_prob(y[:, None], x[:, None] * slopes + intercepts, var)
        resp, log_p = e_step(log_gates, log_lik)
        history.append(log_p.mean().item())
    return history, (slopes, intercepts)'''),
    ("01_data_and_baselines", "q1_conditional_variance", "def conditional_variance(", '''def conditional_variance(gate, means, noise):
    mean = (gate * means).sum(-1, keepdim=True)
    return noise + (gate * (means - mean) ** 2).sum(-1)  # the sd where the variance belongs'''),
    ("01_data_and_baselines", "q2_bagged_lines", "def bagged_lines(", '''def bagged_lines(x, y, x_new, n_bags, generator):
    predictions = []
    for _ in range(n_bags):
        idx = torch.randint(len(x), (len(x),))  # the global generator: not reproducible from the argument
        xb, yb = x[idx], y[idx]
        slope = ((xb - xb.mean()) * (yb - yb.mean())).sum() / ((xb - xb.mean()) ** 2).sum()
        predictions.append(yb.mean() + slope * (x_new - xb.mean()))
    return torch.stack(predictions).mean(0)'''),
    ("01_data_and_baselines", "q3_jump_gate", "def jump_gate(", '''def jump_gate(x, x_train, c):
    return (x < c).to(x.dtype)  # a sharp step at the jump: the data cannot place it'''),
    ("03_losses_and_gumbel", "q1_competitive", "def competitive_loss(", '''def competitive_loss(gate_logits, means, log_var, y):
    log_gates = torch.log_softmax(gate_logits, -1)
    log_n = -0.5 * ((y[:, None] - means) ** 2 + math.log(2 * math.pi))  # the variance fixed at 1
    return -torch.logsumexp(log_gates + log_n, -1).mean()'''),
    ("03_losses_and_gumbel", "q2_cooperative", "def cooperative_loss(", '''def cooperative_loss(gate_logits, means, y):
    blend = (torch.softmax(gate_logits, -1).detach() * means).sum(-1)  # the gate gets no gradient
    return ((y - blend) ** 2).mean()'''),
    ("03_losses_and_gumbel", "q3_gumbel", "def gumbel_hard(", '''def gumbel_hard(logits, u, tau):
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / tau, -1)
    return torch.nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)  # no straight-through'''),
    ("04_logistic_experts", "q1_irls", "def irls_step(", '''def irls_step(x_tilde, y, r, w, l2):
    p = torch.sigmoid(x_tilde @ w)
    grad = x_tilde.T @ (r * (y - p)) - l2 * w
    hess = x_tilde.T @ ((p * (1 - p))[:, None] * x_tilde) + l2 * torch.eye(len(w), dtype=w.dtype)  # r left out
    return w + torch.linalg.solve(hess, grad)'''),
    ("04_logistic_experts", "q2_mixture_proba", "def mixture_log_proba(", '''def mixture_log_proba(log_gates, expert_logits):
    return torch.log_softmax((log_gates.exp()[:, :, None] * expert_logits).sum(1), -1)  # blends the logits'''),
    ("08_all_to_all", "q1_counts", "def send_counts(", '''def send_counts(chosen, n_experts, world_size):
    counts = torch.bincount(chosen)  # no minlength: too short when the last experts get nothing
    return counts.view(world_size, -1)'''),
    ("08_all_to_all", "q2_all_to_all", "def all_to_all(", '''def all_to_all(sends, sizes):
    world = len(sends)
    blocks = [list(x.split(list(sizes[r]))) for r, x in enumerate(sends)]
    return [torch.cat([blocks[r][s] for s in range(world)]) for r in range(world)]  # its own blocks, not its mail'''),
    ("05_elbo_with_noise", "q1_expected_log_lik", "def expected_log_lik(", '''def expected_log_lik(log_gates, means, log_var, y):
    log_n = -0.5 * ((y[None, :, None] - means) ** 2 + math.log(2 * math.pi))  # the noise variance left out (sigma = 1)
    return torch.logsumexp(log_gates + log_n, -1).sum(-1).mean()'''),
    ("05_elbo_with_noise", "q2_gaussian_kl", "def gaussian_kl(", '''def gaussian_kl(loc, log_sd, prior_mean, prior_sd):
    sd = log_sd.exp()  # KL(p || q): the direction reversed
    return (torch.log(sd / prior_sd) + (prior_sd**2 + (loc - prior_mean) ** 2) / (2 * sd**2) - 0.5).sum()'''),
    ("05_elbo_with_noise", "q3_elbo_fit", "def elbo(", '''def elbo(loc, log_sd, x, y, n_draws, generator):
    theta = loc + log_sd.exp() * torch.randn(n_draws, 3, generator=generator, dtype=loc.dtype)
    means = theta[:, :1] + theta[:, 1:2] * x
    log_gates = torch.zeros(n_draws, len(x), 1, dtype=x.dtype)
    fit = expected_log_lik(log_gates, means[..., None], torch.zeros(n_draws, dtype=x.dtype), y)  # sigma outside the likelihood
    return fit - gaussian_kl(loc, log_sd, PRIOR_MEAN, PRIOR_SD)


def fit_posterior(x, y, steps=400, n_draws=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    loc = PRIOR_MEAN.clone().requires_grad_()
    log_sd = torch.full((3,), -3.0, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([loc, log_sd], lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = -elbo(loc, log_sd, x, y, n_draws, generator) / len(x)
        loss.backward()
        optimiser.step()
    return loc.detach(), log_sd.detach()'''),
    ("07_topk_and_capacity", "q1_topk", "def top_k_routing(", '''def top_k_routing(logits, k):
    top, chosen = torch.softmax(logits, -1).topk(k, dim=-1)
    return chosen, top  # the top-k probabilities, not renormalised'''),
    ("07_topk_and_capacity", "q2_capacity", "def kept_assignments(", '''def kept_assignments(chosen, n_experts, capacity_factor):
    n, k = chosen.shape
    capacity = max(1, min(n, math.ceil(capacity_factor * k * n / n_experts)))
    seen = torch.zeros(n_experts, dtype=torch.long)
    kept = torch.zeros(n, k, dtype=torch.bool)
    for t in range(n):  # token by token: a token's second choice queues before the next token's first
        for j in range(k):
            e = chosen[t, j]
            kept[t, j] = seen[e] < capacity
            seen[e] += 1
    return kept'''),
    ("07_topk_and_capacity", "q3_balance", "def switch_balance(", '''def switch_balance(probs, chosen):
    n_experts = probs.shape[-1]
    f = torch.bincount(chosen.reshape(-1), minlength=n_experts).to(probs.dtype) / len(chosen)  # per token: k times too large
    return n_experts * (f * probs.mean(0)).sum()'''),
    ("06_atlas_of_charts", "q1_competitive", "def competitive_loss(", '''def competitive_loss(x, recon, log_gates, var):
    var = torch.as_tensor(var, dtype=x.dtype)
    sq = ((x[:, None, :] - recon) ** 2).sum(-1)
    log_n = -0.5 * (sq / var + torch.log(2 * math.pi * var))  # the normaliser of a 1-D Gaussian, not of D dimensions
    return -torch.logsumexp(log_gates + log_n, -1).mean()'''),
    ("06_atlas_of_charts", "q2_atlas", "def atlas(", '''def atlas(scores, codes, recon, x):
    chosen = scores.argmax(-1)
    rows = torch.arange(len(x))
    mse = ((x - recon[rows, chosen]) ** 2).mean()  # averaged over the D coordinates too: D times too small
    return chosen, codes[rows, chosen], mse'''),
    ("06_atlas_of_charts", "q3_linear_charts", "def fit_chart(", '''def fit_chart(x, r):
    w = r / r.sum()
    mean = w @ x
    z = x - mean
    values, vectors = torch.linalg.eigh((w[:, None] * z).T @ z)
    return mean, vectors[:, 0]  # eigh sorts ascending: the smallest eigenvalue's direction, across the data


def linear_atlas(x, resp):
    codes, recons = [], []
    for e in range(resp.shape[1]):
        mean, u = fit_chart(x, resp[:, e])
        code = (x - mean) @ u
        codes.append(code)
        recons.append(mean + code[:, None] * u)
    return atlas(resp, torch.stack(codes, 1), torch.stack(recons, 1), x)'''),
]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """{name: folder} of every assignment, built once by book/assignments.py."""
    out = tmp_path_factory.mktemp("assignments")
    return {m.stem: assignments.build(m, out / m.stem).parent.parent for m in MASTERS}


def test_every_chapter_has_an_assignment():
    chapters = {p.name[:2] for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")}
    assert chapters <= {m.name[:2] for m in MASTERS}, "chapters without an assignment"


def grade(nb, tests_dir: Path, workdir: Path) -> dict[str, list[tuple[bool, bool]]]:
    """Run a notebook's code cells here (errors go on, as in otter), then each question's test file:
    {question: [(hidden, passed) for each test case]}."""
    from IPython.core.inputtransformer2 import TransformerManager
    from otter.nbmeta_config import NBMetadataConfig
    from otter.test_files import create_test_file

    env, transform = {"__name__": "__main__"}, TransformerManager()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for cell in nb.cells:
            if cell.cell_type != "code" or "grader.check(" in cell.source or "grader.export(" in cell.source:
                continue
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                exec(compile(transform.transform_cell(cell.source), "<cell>", "exec"), env)
        results = {}
        for path in sorted(tests_dir.glob("*.py")):
            test = create_test_file(str(path), NBMetadataConfig())
            with contextlib.redirect_stdout(io.StringIO()):
                test.run(env)
            results[path.stem] = [(r.test_case.hidden, r.passed) for r in test.test_case_results]
        return results
    finally:
        os.chdir(cwd)


def autograder_tests(folder: Path, tmp_path: Path) -> Path:
    """The full tests (public and hidden) from the autograder zip."""
    with zipfile.ZipFile(next((folder / "autograder").glob("*-autograder.zip"))) as z:
        z.extractall(tmp_path / "zip")
    return tmp_path / "zip" / "tests"


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_solution_passes_every_test_and_the_student_version_fails_every_question(built, master, tmp_path):
    folder = built[master.stem]
    tests = autograder_tests(folder, tmp_path)
    solution = nbformat.read(folder / "autograder" / master.name, as_version=4)
    results = grade(solution, tests, tmp_path)
    assert results and all(passed for cases in results.values() for _, passed in cases), results
    assert all(any(hidden for hidden, _ in cases) for cases in results.values()), "a question without hidden tests"
    student = nbformat.read(folder / "student" / master.name, as_version=4)
    results = grade(student, tests, tmp_path)
    assert all(not any(passed for _, passed in cases) for cases in results.values()), results


@pytest.mark.parametrize("assignment, question, first_line, wrong", WRONG, ids=[f"{w[0]}-{w[1]}" for w in WRONG])
def test_a_planted_wrong_answer_fails_its_hidden_tests(built, tmp_path, assignment, question, first_line, wrong):
    folder = built[assignment]
    nb = copy.deepcopy(nbformat.read(folder / "autograder" / f"{assignment}.ipynb", as_version=4))
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(first_line))
    cell.source = wrong
    results = grade(nb, autograder_tests(folder, tmp_path), tmp_path)
    assert not all(passed for hidden, passed in results[question] if hidden), results[question]


def test_every_question_has_a_planted_wrong_answer():
    questions = {(m.stem, q) for m in MASTERS for q in _questions(m)}
    assert questions <= {(a, q) for a, q, _, _ in WRONG}, sorted(questions - {(a, q) for a, q, _, _ in WRONG})


def _questions(master: Path) -> list[str]:
    nb = nbformat.read(master, as_version=4)
    return [line.split(":", 1)[1].strip() for c in nb.cells if c.cell_type == "raw"
            and c.source.startswith("# BEGIN QUESTION") for line in c.source.splitlines() if line.startswith("name:")]


def secret_and_public_lines(master: Path) -> tuple[set[str], set[str]]:
    """The lines of a master's solutions and hidden tests (longer than 12 characters), and the lines
    of its public tests, which a hidden test may share without leaking anything."""
    nb = nbformat.read(master, as_version=4)
    secret, public, in_solution, in_tests = set(), set(), False, False
    for cell in nb.cells:
        if cell.cell_type == "raw":
            head = cell.source.strip()
            in_solution = head.startswith("# BEGIN SOLUTION") or (in_solution and not head.startswith("# END SOLUTION"))
            in_tests = head.startswith("# BEGIN TESTS") or (in_tests and not head.startswith("# END TESTS"))
            continue
        hidden, block = in_tests and "hidden: true" in cell.source, False
        for line in cell.source.splitlines():
            text = line.strip()
            block = block or text.startswith("# BEGIN SOLUTION")
            if in_tests and not hidden:
                public.add(text)
            elif (in_solution and (block or text.endswith("# SOLUTION"))) or hidden:
                if not text.startswith(('"""', "#", "hidden:")):
                    secret.add(text.removesuffix("# SOLUTION").strip())
            block = block and not text.startswith("# END SOLUTION")
    return {s for s in secret if len(s) > 12}, public


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_no_solution_or_hidden_test_leaks_to_the_student(built, master):
    student = built[master.stem] / "student"
    text = "\n".join(p.read_text() for p in student.rglob("*") if p.is_file())
    secret, public = secret_and_public_lines(master)
    assert secret, "no solution lines found: is the master annotated?"
    leaks = [s for s in secret - public if s in text]
    assert not leaks, leaks
    assert "hidden: true" not in text and "'hidden': True" not in text


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_otter_run_grades_the_solution_end_to_end(built, master, tmp_path):
    folder = built[master.stem]
    otter = Path(sys.executable).parent / "otter"
    proc = subprocess.run([str(otter), "run", "-a", str(next((folder / "autograder").glob("*.zip"))), "-o",
                           str(tmp_path), "--no-logo", str(folder / "autograder" / master.name)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    scored = [t for t in json.loads((tmp_path / "results.json").read_text())["tests"] if t.get("max_score")]
    assert scored and all(t["score"] == t["max_score"] for t in scored), scored


def test_make_assignments_builds_every_master():
    makefile = (ROOT / "Makefile").read_text()
    assert "assignments:" in makefile and "book/assignments.py" in makefile
    assert ast.parse((ROOT / "book" / "assignments.py").read_text())
