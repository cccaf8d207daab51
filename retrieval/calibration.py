"""Calibrated confidence: logistic regression over a few ranking features (numpy only).

The coefficients are fitted offline on held-out BANKING77 queries (bench/retrieval_calibrate.py)
and shipped as calibration.json next to this file, one model per retrieval mode.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")

_HYBRID = ("top_dense", "dense_margin", "top_bm25", "bm25_margin", "vote_share")
_BM25 = ("top_bm25", "bm25_margin", "vote_share")
# One model per retrieval mode, and apart for labelled KBs (each chunk carries the label of
# its answer, as in intent data) whose vote shares mean something else than for articles.
FEATURES = {"hybrid": _HYBRID, "bm25": _BM25, "hybrid_labeled": _HYBRID, "bm25_labeled": _BM25}
MODES = tuple(FEATURES)


@dataclass(frozen=True)
class Calibrator:
    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float

    def predict(self, values: Mapping[str, float]) -> float:
        z = self.intercept + sum(c * values.get(f, 0.0) for f, c in zip(
            self.features, self.coef, strict=True))
        # Numerically safe logistic.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def to_json(self) -> dict[str, object]:
        return {"features": list(self.features), "coef": list(self.coef),
                "intercept": self.intercept}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Calibrator:
        feats = data["features"]
        coef = data["coef"]
        assert isinstance(feats, list) and isinstance(coef, list)
        return cls(tuple(str(f) for f in feats), tuple(float(c) for c in coef),
                   float(str(data["intercept"])))


# Used only when calibration.json is missing: a monotone guess, not a fitted model.
_FALLBACK = {
    mode: Calibrator(FEATURES[mode], (8.0, 10.0, 2.0, 2.0, 3.0), -8.0)
    if mode.startswith("hybrid")
    else Calibrator(FEATURES[mode], (6.0, 6.0, 3.0), -5.0)
    for mode in MODES
}


def load_calibrators(path: Path = CALIBRATION_FILE) -> dict[str, Calibrator]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return dict(_FALLBACK)
    out = dict(_FALLBACK)
    for mode, entry in data.get("models", {}).items():
        out[mode] = Calibrator.from_json(entry)
    return out


def fit_logistic(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    l2: float = 1e-3,
    iterations: int = 50,
) -> tuple[npt.NDArray[np.float64], float]:
    """Newton's method (IRLS) for L2-regularized logistic regression; returns (coef, bias)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -35, 35)))
        grad = xb.T @ (p - y) / n + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / n + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return w[:-1], float(w[-1])


def fit_calibrator(
    feature_names: Sequence[str], rows: Sequence[Mapping[str, float]], labels: Sequence[bool]
) -> Calibrator:
    x = np.array([[r[f] for f in feature_names] for r in rows], dtype=np.float64)
    y = np.array(labels, dtype=np.float64)
    coef, bias = fit_logistic(x, y)
    return Calibrator(tuple(feature_names), tuple(float(c) for c in coef), bias)


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(
    probs: Sequence[float], outcomes: Sequence[bool], bins: int = 10
) -> float:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(outcomes, dtype=np.float64)
    if p.size == 0:
        return 0.0
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += abs(float(p[m].mean()) - float(y[m].mean())) * float(m.mean())
    return ece
