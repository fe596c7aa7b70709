"""GLUE's official metrics, from predictions and labels as NumPy arrays.

Binary F1 counts class 1 ("equivalent", "duplicate") as positive, as the
GLUE leaderboard does; Spearman ranks ties by their average rank.
"""

from __future__ import annotations

import numpy as np

from mobilebert_jax.finetune.glue import GlueDataset


def accuracy(preds_N: np.ndarray, labels_N: np.ndarray) -> float:
    return float(np.mean(np.asarray(preds_N) == np.asarray(labels_N)))


def f1_binary(preds_N: np.ndarray, labels_N: np.ndarray) -> float:
    preds, labels = np.asarray(preds_N) == 1, np.asarray(labels_N) == 1
    true_pos = np.sum(preds & labels)
    denominator = np.sum(preds) + np.sum(labels)
    return float(2.0 * true_pos / denominator) if denominator else 0.0


def matthews_corrcoef(preds_N: np.ndarray, labels_N: np.ndarray) -> float:
    """Multi-class MCC (Gorodkin's R_K); the binary phi coefficient for two classes. 0 when undefined."""
    preds, labels = np.asarray(preds_N), np.asarray(labels_N)
    classes = np.union1d(preds, labels)
    confusion_KxK = (labels[:, None] == classes[None, :]).T.astype(np.float64) @ \
        (preds[:, None] == classes[None, :]).astype(np.float64)
    n = confusion_KxK.sum()
    correct = np.trace(confusion_KxK)
    true_K, pred_K = confusion_KxK.sum(axis=1), confusion_KxK.sum(axis=0)
    cov_pred_true = correct * n - true_K @ pred_K
    cov_pred = n * n - pred_K @ pred_K
    cov_true = n * n - true_K @ true_K
    if cov_pred == 0 or cov_true == 0:
        return 0.0
    return float(cov_pred_true / np.sqrt(cov_pred * cov_true))


def pearson(preds_N: np.ndarray, labels_N: np.ndarray) -> float:
    x = np.asarray(preds_N, np.float64) - np.mean(preds_N)
    y = np.asarray(labels_N, np.float64) - np.mean(labels_N)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator else float("nan")


def average_ranks(values_N: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    values = np.asarray(values_N)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start of each run of equal values, and the mean rank of the run.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_ranks = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def spearman(preds_N: np.ndarray, labels_N: np.ndarray) -> float:
    return pearson(average_ranks(preds_N), average_ranks(labels_N))


METRICS = {"accuracy": accuracy, "f1": f1_binary, "matthews_corrcoef": matthews_corrcoef, "pearson": pearson,
           "spearman": spearman}


def predictions_from_logits(task: GlueDataset, logits_NxK: np.ndarray) -> np.ndarray:
    """Class indices (argmax), or the regression head's scores."""
    logits = np.asarray(logits_NxK)
    return logits[:, 0] if task.is_regression else np.argmax(logits, axis=-1)


def compute_metrics(task: GlueDataset, preds_N: np.ndarray, labels_N: np.ndarray) -> dict[str, float]:
    """The task's official metrics; for two-metric tasks also their mean (`combined`), as GLUE averages them."""
    if len(preds_N) != len(labels_N):
        raise ValueError(f"{len(preds_N)} predictions but {len(labels_N)} labels")
    if len(labels_N) == 0:
        raise ValueError(f"GLUE {task.name}: no examples to score")
    scores = {name: METRICS[name](preds_N, labels_N) for name in task.metrics}
    if len(scores) > 1:
        scores["combined"] = float(np.mean(list(scores.values())))
    return scores
