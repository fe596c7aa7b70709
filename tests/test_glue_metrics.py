"""GLUE metrics against scikit-learn and SciPy."""

from __future__ import annotations

import numpy as np
import pytest

from mobilebert_jax.finetune import glue, glue_metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


def _classes(seed, n, k, agreement):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < agreement, labels, rng.integers(0, k, n))
    return preds, labels


@pytest.mark.parametrize("seed,n,k,agreement", [(0, 500, 2, 0.7), (1, 37, 2, 0.2), (2, 300, 3, 0.6), (3, 10, 2, 1.0)])
def test_classification_metrics_match_sklearn(seed, n, k, agreement):
    preds, labels = _classes(seed, n, k, agreement)
    assert glue_metrics.accuracy(preds, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
    assert glue_metrics.matthews_corrcoef(preds, labels) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, preds), abs=1e-12)
    if k == 2:
        assert glue_metrics.f1_binary(preds, labels) == pytest.approx(sklearn_metrics.f1_score(labels, preds))


def test_degenerate_cases_match_sklearn():
    ones, zeros = np.ones(8, int), np.zeros(8, int)
    mixed = np.array([0, 1] * 4)
    for preds, labels in [(ones, mixed), (zeros, mixed), (zeros, zeros)]:
        assert glue_metrics.matthews_corrcoef(preds, labels) == sklearn_metrics.matthews_corrcoef(labels, preds)
        assert glue_metrics.f1_binary(preds, labels) == sklearn_metrics.f1_score(labels, preds, zero_division=0.0)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True)])
def test_correlations_match_scipy(seed, ties):
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 5, 400)
    preds = labels + rng.normal(0, 1.5, 400)
    if ties:  # STS-B gold scores repeat a lot; predictions can too
        labels, preds = np.round(labels * 2) / 2, np.round(preds)
    assert glue_metrics.pearson(preds, labels) == pytest.approx(scipy_stats.pearsonr(preds, labels)[0], abs=1e-12)
    assert glue_metrics.spearman(preds, labels) == pytest.approx(scipy_stats.spearmanr(preds, labels)[0], abs=1e-12)
    np.testing.assert_allclose(glue_metrics.average_ranks(preds), scipy_stats.rankdata(preds))


def test_compute_metrics_per_task():
    preds, labels = _classes(4, 200, 2, 0.8)
    mrpc = glue_metrics.compute_metrics(glue.get_task("mrpc"), preds, labels)
    assert set(mrpc) == {"f1", "accuracy", "combined"}
    assert mrpc["combined"] == pytest.approx((mrpc["f1"] + mrpc["accuracy"]) / 2)
    assert set(glue_metrics.compute_metrics(glue.get_task("cola"), preds, labels)) == {"matthews_corrcoef"}
    scores = np.linspace(0, 5, 20)
    stsb = glue_metrics.compute_metrics(glue.get_task("stsb"), scores[::-1] ** 2, scores)
    assert stsb["spearman"] == pytest.approx(-1.0) and -1.0 < stsb["pearson"] < -0.9
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0]])
    np.testing.assert_array_equal(glue_metrics.predictions_from_logits(glue.get_task("mnli"), logits), [1, 0])
    np.testing.assert_array_equal(glue_metrics.predictions_from_logits(glue.get_task("stsb"), logits[:, :1]),
                                  [0.1, 2.0])
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        glue_metrics.compute_metrics(glue.get_task("rte"), np.zeros(3), np.zeros(2))
