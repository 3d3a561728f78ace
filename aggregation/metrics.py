"""Agreement between a predicted clustering and the truth.

All scores come from the contingency table of the two labelings over the items present in both
(`n_items` says how many). Pairwise precision/recall count item pairs put together; B-cubed
averages per item, so one huge merged cluster cannot hide behind many correct small ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["clustering_scores", "confidence_scores"]


def _entropy(counts: np.ndarray, total: float) -> float:
    p = counts[counts > 0] / total
    return float((p * np.log(1.0 / p)).sum())  # not -(p log p): one cluster would give -0.0


def _pairs(counts: np.ndarray) -> float:
    return float((counts * (counts - 1)).sum() / 2)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def clustering_scores(predicted: pd.Series, truth: pd.Series) -> dict[str, float]:
    """ARI, NMI (arithmetic normalisation), variation of information (nats), pairwise P/R/F1,
    B-cubed P/R/F1, and n_items. Written from the contingency table, without scikit-learn, so the CLI
    does not pay for importing it.

    >>> truth = pd.Series([0, 0, 1, 1], index=list("abcd"))
    >>> scores = clustering_scores(pd.Series([5, 5, 7, 7], index=list("abcd")), truth)
    >>> scores["ari"], scores["bcubed_f1"]
    (1.0, 1.0)
    """
    common = predicted.index.intersection(truth.index)
    if len(common) == 0:
        raise ValueError("predicted and truth share no items")
    common = common.sort_values()
    _, pred = np.unique(predicted.loc[common].astype(str).to_numpy(), return_inverse=True)
    _, true = np.unique(truth.loc[common].astype(str).to_numpy(), return_inverse=True)
    n = float(len(common))
    n_true = int(true.max()) + 1
    keys, cells = np.unique(pred.astype(np.int64) * n_true + true, return_counts=True)
    cell_row, cell_col = keys // n_true, keys % n_true
    cells = cells.astype(np.float64)
    rows = np.bincount(pred).astype(np.float64)
    cols = np.bincount(true).astype(np.float64)

    h_pred, h_true = _entropy(rows, n), _entropy(cols, n)
    mutual = float((cells / n * np.log(cells * n / (rows[cell_row] * cols[cell_col]))).sum())
    vi = max(h_pred + h_true - 2.0 * mutual, 0.0)
    nmi = mutual / (0.5 * (h_pred + h_true)) if h_pred + h_true > 0 else 1.0

    both, in_pred, in_true = _pairs(cells), _pairs(rows), _pairs(cols)
    total = n * (n - 1) / 2
    expected = in_pred * in_true / total if total else 0.0
    denom = 0.5 * (in_pred + in_true) - expected
    ari = (both - expected) / denom if denom != 0 else 1.0
    precision = both / in_pred if in_pred else 1.0
    recall = both / in_true if in_true else 1.0

    # B-cubed: per item, |own cluster ∩ own class| / |own cluster| (precision) and / |own class| (recall).
    b_precision = float((cells**2 / rows[cell_row]).sum() / n)
    b_recall = float((cells**2 / cols[cell_col]).sum() / n)
    return {
        "n_items": float(len(common)),
        "ari": float(ari),
        "nmi": float(min(max(nmi, 0.0), 1.0)),
        "vi": float(vi),
        "pairwise_precision": precision,
        "pairwise_recall": recall,
        "pairwise_f1": _f1(precision, recall),
        "bcubed_precision": b_precision,
        "bcubed_recall": b_recall,
        "bcubed_f1": _f1(b_precision, b_recall),
    }


def confidence_scores(predicted: pd.Series, confidence: pd.Series, truth: pd.Series) -> dict[str, float]:
    """How well the confidences tell which items are where they belong: Brier score and log loss.

    An item is where it belongs when its cluster's most common class is its own. A confidence of
    0.9 should then be right 9 times in 10: both scores are lower the better the confidences do
    that (0 for confidences of exactly 1 on right items and 0 on wrong ones).

    >>> truth = pd.Series([0, 0, 0, 1], index=list("abcd"))
    >>> clusters = pd.Series([5, 5, 5, 5], index=list("abcd"))
    >>> scores = confidence_scores(clusters, pd.Series([1.0, 1.0, 1.0, 0.0], index=list("abcd")), truth)
    >>> scores["brier"], round(scores["log_loss"], 6)
    (0.0, 1e-06)
    """
    common = predicted.index.intersection(truth.index).intersection(confidence.index).sort_values()
    if len(common) == 0:
        raise ValueError("predicted, confidence and truth share no items")
    clusters, classes = predicted.loc[common].astype(str), truth.loc[common].astype(str)
    home = pd.crosstab(clusters, classes).idxmax(axis=1)  # each cluster's most common class
    right = (clusters.map(home) == classes).to_numpy(dtype=np.float64)
    value = confidence.loc[common].to_numpy(dtype=np.float64)
    p = np.clip(value, 1e-6, 1.0 - 1e-6)
    log_loss = -(right * np.log(p) + (1.0 - right) * np.log(1.0 - p)).mean()
    return {"brier": float(((value - right) ** 2).mean()), "log_loss": float(log_loss)}
