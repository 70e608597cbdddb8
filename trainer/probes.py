"""Linear probes on frozen clip embeddings, and the five metrics of MEDIAFM.md.

Every split is by title, never by clip: a title's clips are all in the
training part or all in the test part of a fold. The probe is a ridge model
on standardised features (scikit-learn); its regularisation is chosen by an
inner cross-validation over the training titles only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import RidgeCV
from sklearn.metrics import average_precision_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ALPHAS = np.logspace(0, 4, 5)


@dataclass(frozen=True)
class Task:
    name: str
    column: str
    kind: str  # "multilabel" | "binary" | "ranking"
    metric: str
    n_classes: int | None = None
    folds: int = 5
    """Outer folds over titles (the source: 10 for popularity)."""


TASKS = (
    Task("ad_relevancy", "ad_labels", "multilabel", "AP (macro over ad categories)"),
    Task("popularity", "popularity", "ranking", "Kendall's tau within title", folds=10),
    Task("tone", "tones", "multilabel", "micro AP", 100),
    Task("genre", "genres", "multilabel", "macro AP over classes present", 11),
    Task("retrieval", "clip_worthy", "binary", "AP"),
)


def multilabel_targets(labels: list[list[int]], n_classes: int) -> np.ndarray:
    y = np.zeros((len(labels), n_classes), np.float32)
    for i, row in enumerate(labels):
        y[i, list(row)] = 1.0
    return y


def title_folds(titles: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) over clips, folds formed from shuffled titles."""
    uniq = np.unique(titles)
    if len(uniq) < n_folds:
        raise ValueError(f"{len(uniq)} evaluation titles cannot make {n_folds} folds; add titles or lower --folds")
    perm = np.random.default_rng(seed).permutation(uniq)
    fold_of = {t: i % n_folds for i, t in enumerate(perm)}
    f = np.array([fold_of[t] for t in titles])
    return [(np.flatnonzero(f != k), np.flatnonzero(f == k)) for k in range(n_folds)]


def fit_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """Standardise + ridge; alpha by 3-fold inner CV over the training titles.

    Where an inner fold cannot score R^2 (a fold of one clip: datasets with one labelled clip a title), scikit-learn
    warns once a fit and keeps the first alpha; those warnings (thousands over an evaluation) are not shown."""
    inner = min(3, len(np.unique(groups)))
    cv = list(GroupKFold(n_splits=inner).split(x, y, groups)) if inner >= 2 else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="One or more of the test scores are non-finite")
        return make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS, cv=cv)).fit(x, y)


def macro_ap_present(y: np.ndarray, s: np.ndarray) -> tuple[float, int]:
    """Macro AP over the classes that have a positive in y; (ap, n_classes_scored).

    A class absent from the test fold has no defined AP: it is left out, not scored 0.
    """
    present = y.sum(0) > 0
    if not present.any():
        return float("nan"), 0
    return float(average_precision_score(y[:, present], s[:, present], average="macro")), int(present.sum())


def kendall_within_titles(y: np.ndarray, s: np.ndarray, titles: np.ndarray) -> float:
    """Mean over titles (with >= 2 clips) of Kendall's tau between predicted and true popularity."""
    taus = []
    for t in np.unique(titles):
        m = titles == t
        if m.sum() >= 2:
            tau = kendalltau(y[m], s[m]).statistic
            if np.isfinite(tau):
                taus.append(tau)
    return float(np.mean(taus)) if taus else float("nan")


def score(task: Task, y: np.ndarray, s: np.ndarray, titles: np.ndarray) -> float:
    if task.kind == "ranking":
        return kendall_within_titles(y, s, titles)
    if task.kind == "binary":
        return float(average_precision_score(y, s)) if 0 < y.sum() < len(y) else float("nan")
    if task.name == "tone":
        return float(average_precision_score(y, s, average="micro")) if y.sum() > 0 else float("nan")
    return macro_ap_present(y, s)[0]


def evaluate_task(task: Task, x: np.ndarray, y: np.ndarray, titles: np.ndarray, *, n_folds: int,
                  seed: int) -> float:
    """Mean over outer folds of the task metric on held-out titles."""
    scores = []
    for train, test in title_folds(titles, n_folds, seed):
        if task.kind != "ranking" and y[train].ndim == 2:
            keep = y[train].sum(0) > 0  # a class never seen in training cannot be probed
            if not keep.any():
                continue
            probe = fit_probe(x[train], y[train][:, keep], titles[train])
            s = np.full(y[test].shape, -np.inf, dtype=np.float64)
            s[:, keep] = probe.predict(x[test]).reshape(len(test), -1)
            s[:, ~keep] = s[:, keep].min() - 1.0
        else:
            probe = fit_probe(x[train], y[train], titles[train])
            s = probe.predict(x[test])
        value = score(task, y[test], s, titles[test])
        if np.isfinite(value):
            scores.append(value)
    return float(np.mean(scores)) if scores else float("nan")
