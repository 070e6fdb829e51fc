"""The linear probe protocol against scikit-learn on the same rows; validation-only selection;
the vectorised task metrics and closed-form loss gradients against their reference definitions."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from mirkit.eval.linear_probe import LAMBDAS, fit_linear, linear_probe, one_hot
from mirkit.eval.tasks import TaskSpec, batch_macro_auc, batch_r2, make_task

TIGHT = {"tol": 1e-9, "max_iter": 2000, "products": torch.float64}


def data(n=300, d=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d)   # unstandardised columns
    teacher = rng.normal(size=(d, c))
    return x, x @ teacher + 2 * rng.normal(size=(n, c))


@pytest.mark.parametrize("lam", [1e-1, 1e-3])
def test_softmax_matches_sklearn_logistic_regression(lam):
    x, z = data()
    y = z.argmax(1)
    fit = fit_linear(x, one_hot(y, 4), "softmax", [lam], **TIGHT)
    assert fit.converged.all()
    xs = StandardScaler().fit_transform(x)
    sk = LogisticRegression(C=1 / (len(x) * lam), tol=1e-12, max_iter=10000).fit(xs, y)
    ours = torch.softmax(fit.outputs(x)[0], -1).numpy()
    np.testing.assert_allclose(ours, sk.predict_proba(xs), atol=1e-5)
    assert (ours.argmax(1) == sk.predict(xs)).all()


def test_independent_logistic_matches_sklearn_per_column():
    x, z = data(seed=1)
    y = (z > 0.5).astype(np.float64)
    lam = 1e-2
    fit = fit_linear(x, y, "logistic", [lam], **TIGHT)
    xs = StandardScaler().fit_transform(x)
    ours = torch.sigmoid(fit.outputs(x)[0]).numpy()
    for k in range(y.shape[1]):
        sk = LogisticRegression(C=1 / (len(x) * lam), tol=1e-12, max_iter=10000).fit(xs, y[:, k])
        np.testing.assert_allclose(ours[:, k], sk.predict_proba(xs)[:, 1], atol=1e-5)


def test_ridge_matches_sklearn_for_every_strength_and_when_dims_exceed_rows():
    for n, d in ((300, 12), (20, 50)):
        x, z = data(n=n, d=d, c=2, seed=2)
        fit = fit_linear(x, z, "ridge", LAMBDAS)
        xs = StandardScaler().fit_transform(x)
        out = fit.outputs(x).numpy()
        for i, lam in enumerate(LAMBDAS):
            sk = Ridge(alpha=n * lam).fit(xs, z)
            np.testing.assert_allclose(out[i], sk.predict(xs), atol=1e-6 * max(1, np.abs(z).max()))


def test_the_whole_grid_solved_together_equals_each_strength_alone():
    x, z = data(seed=3)
    y = one_hot(z.argmax(1), 4)
    together = fit_linear(x, y, "softmax", LAMBDAS, **TIGHT).outputs(x)
    for i, lam in enumerate(LAMBDAS):
        alone = fit_linear(x, y, "softmax", [lam], **TIGHT).outputs(x)[0]
        torch.testing.assert_close(torch.softmax(together[i], -1), torch.softmax(alone, -1), atol=1e-6, rtol=0)


def test_default_tolerance_gives_sklearn_default_predictions():
    x, z = data(n=600, d=40, c=5, seed=4)
    y = z.argmax(1)
    lam = 1e-3
    fit = fit_linear(x, one_hot(y, 5), "softmax", [lam])   # float32 products, tol 1e-4 (sklearn's default)
    xs = StandardScaler().fit_transform(x)
    sk = LogisticRegression(C=1 / (len(x) * lam), tol=1e-10, max_iter=10000).fit(xs, y)
    assert (fit.outputs(x)[0].argmax(1).numpy() == sk.predict(xs)).mean() >= 0.99


def test_linear_probe_chooses_on_validation_only():
    x, z = data(n=400, d=30, c=3, seed=5)
    y = z.argmax(1)
    tr, va, te = slice(0, 200), slice(200, 300), slice(300, 400)
    honest = linear_probe(x[tr], y[tr], x[va], y[va], "multiclass", x_test=x[te], y_test=y[te])
    adversarial = linear_probe(x[tr], y[tr], x[va], y[va], "multiclass", x_test=x[te], y_test=(y[te] + 1) % 3)
    assert honest.lam == adversarial.lam and honest.valid_scores == adversarial.valid_scores
    assert honest.valid_score == max(honest.valid_scores.values())
    assert honest.test_score > 0.7 and adversarial.test_score < 0.3
    assert honest.metric == "accuracy" and set(honest.valid_scores) == set(LAMBDAS)


def test_linear_probe_multilabel_and_regression_metrics():
    x, z = data(n=400, d=20, c=3, seed=6)
    tags = (z > 0).astype(np.float32)
    r = linear_probe(x[:300], tags[:300], x[300:], tags[300:], "multilabel")
    out = r.fit.outputs(x[300:])[0].numpy()
    assert r.valid_score == pytest.approx(roc_auc_score(tags[300:], out, average="macro"))
    r = linear_probe(x[:300], z[:300], x[300:], z[300:], "regression")
    out = r.fit.outputs(x[300:])[0].numpy()
    assert r.valid_score == pytest.approx(r2_score(z[300:], out))


# --------------------------------------------------------------------------- task helpers
def test_vectorised_primary_scores_equal_the_task_scores():
    rng = np.random.default_rng(7)
    outputs = rng.normal(size=(5, 40, 24)).astype(np.float32)
    outputs[:, :, 3] = np.round(outputs[:, :, 3])   # ties in the AUC ranks
    specs = {"multiclass": TaskSpec("m", "multiclass", ["l"]), "key": TaskSpec("k", "key", ["l"]),
             "multilabel": TaskSpec("t", "multilabel", ["l"]), "regression": TaskSpec("r", "regression", ["a", "b"])}
    targets = {"multiclass": rng.integers(0, 24, 40), "key": rng.integers(0, 24, 40),
               "multilabel": (rng.random((40, 24)) < 0.3).astype(np.float32),
               "regression": rng.normal(size=(40, 2)).astype(np.float32)}
    targets["multilabel"][:, 5] = 0   # a column without positives is left out, as in score()
    for kind, spec in specs.items():
        task = make_task(spec)
        task.n_outputs = 24
        out = outputs[..., :2] if kind == "regression" else outputs
        fast = task.primary_scores(torch.as_tensor(out), targets[kind])
        slow = [task.score(o, targets[kind])[task.primary] for o in out]
        np.testing.assert_allclose(fast, slow, rtol=1e-6, err_msg=kind)
    assert np.isnan(batch_macro_auc(outputs[:, :, :2], np.zeros((40, 2)))).all()
    np.testing.assert_allclose(batch_r2(outputs[:, :, :1], targets["regression"][:, :1]),
                               [r2_score(targets["regression"][:, 0], o[:, 0]) for o in outputs], rtol=1e-5)


@pytest.mark.parametrize("kind", ["multiclass", "key", "multilabel", "regression", "beats", "chords"])
def test_closed_form_output_gradient_equals_autograd(kind):
    from mirkit.eval.tasks import IGNORE, Task
    rng = np.random.default_rng(8)
    task = make_task(TaskSpec("x", kind, ["a", "b"] if kind == "regression" else ["a"]))
    c = {"multiclass": 5, "key": 24, "multilabel": 6, "regression": 2, "beats": 1, "chords": 25}[kind]
    task.n_outputs = c
    out = torch.as_tensor(rng.normal(size=(3, 16, c)), dtype=torch.float32)
    if kind in ("multiclass", "key", "chords"):
        y = torch.as_tensor(rng.integers(0, c, 16))
        if kind == "chords":
            y[[2, 7]] = IGNORE
    elif kind == "beats":
        y = torch.as_tensor(rng.choice([0.0, 0.5, 1.0], 16), dtype=torch.float32)
    else:
        y = torch.as_tensor(rng.random((16, c)) < 0.4 if kind == "multilabel" else rng.normal(size=(16, c)),
                            dtype=torch.float32)
    torch.testing.assert_close(task.output_grad(out, y), Task.output_grad(task, out, y), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(task.losses(out, y), torch.stack([task.loss(o, y) for o in out]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["softmax", "logistic", "ridge"])
def test_layers_solved_together_equal_each_layer_alone(kind):
    """The layer sweep's one batched solve gives every layer the fit it gets alone."""
    from mirkit.eval.linear_probe import fit_linear_layers
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=120)
    xs = [rng.normal(size=(120, 10)) + scale * np.eye(4, 10)[y] for scale in (0.0, 1.0, 3.0)]
    target = one_hot(y, 4) if kind != "ridge" else torch.as_tensor(y, dtype=torch.float64)
    together = fit_linear_layers(xs, target, kind, [1e-1, 1e-3], **TIGHT)
    for x, fit in zip(xs, together, strict=True):
        alone = fit_linear(x, target, kind, [1e-1, 1e-3], **TIGHT)
        torch.testing.assert_close(fit.outputs(x), alone.outputs(x), atol=1e-6, rtol=0)
