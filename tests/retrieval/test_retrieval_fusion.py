from __future__ import annotations

import numpy as np

from retrieval.calibration import (
    Calibrator,
    auroc,
    expected_calibration_error,
    fit_calibrator,
    fit_logistic,
    load_calibrators,
)
from retrieval.fusion import group_vote, rrf, top_indices, weighted


def test_top_indices_orders_best_first_and_skips_infinite() -> None:
    s = np.array([0.1, 0.9, -np.inf, 0.5, 0.9])
    assert top_indices(s, 3).tolist() == [1, 4, 3]
    assert top_indices(s, 10).tolist() == [1, 4, 3, 0]
    assert top_indices(np.zeros(0), 3).size == 0


def test_rrf_rewards_agreement() -> None:
    fused = rrf([np.array([0, 1, 2]), np.array([1, 0])], k=60, size=4)
    assert fused[1] == fused[0] > fused[2]
    assert fused[3] == -np.inf


def test_weighted() -> None:
    np.testing.assert_allclose(weighted(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 0.75),
                               [0.75, 0.25])


def test_group_vote_lets_many_close_neighbours_beat_one_slightly_better() -> None:
    scores = np.array([0.90, 0.89, 0.88, 0.87, 0.5])
    groups = np.array([0, 1, 1, 1, 0])
    cand = np.arange(5)
    vote = group_vote(cand, scores, groups, vote_k=4, temp=0.05)
    assert vote.order.tolist()[:3] == [1, 2, 3]  # group 1 wins, its best first
    assert 0.5 < vote.group_share < 1.0
    sharp = group_vote(cand, scores, groups, vote_k=4, temp=1e-4)
    assert sharp.order.tolist()[0] == 0  # a near-zero temperature is 1-NN


def test_group_vote_without_labels_is_score_order() -> None:
    scores = np.array([0.9, 0.8, 0.7])
    vote = group_vote(np.arange(3), scores, np.arange(3), vote_k=3, temp=0.05)
    assert vote.order.tolist() == [0, 1, 2]


def test_logistic_fit_recovers_a_known_model() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    p = 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.5)))
    y = (rng.random(4000) < p).astype(float)
    coef, bias = fit_logistic(x, y, l2=0.0)
    np.testing.assert_allclose(coef, [2.0, -1.0], atol=0.2)
    assert abs(bias - 0.5) < 0.15


def test_fitted_calibrator_is_calibrated_on_its_data() -> None:
    rng = np.random.default_rng(1)
    s = rng.random(3000)
    y = rng.random(3000) < s  # probability of being right grows with the score
    cal = fit_calibrator(["top_dense"], [{"top_dense": float(v)} for v in s], y.tolist())
    probs = [cal.predict({"top_dense": float(v)}) for v in s]
    assert expected_calibration_error(probs, y.tolist()) < 0.05
    assert cal.predict({"top_dense": 0.9}) > cal.predict({"top_dense": 0.1})
    assert Calibrator.from_json(cal.to_json()) == cal


def test_auroc() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert np.isnan(auroc([0.5], [True]))


def test_shipped_calibration_has_every_mode() -> None:
    cals = load_calibrators()
    for mode in ("hybrid", "bm25"):
        p = cals[mode].predict({})
        assert 0.0 <= p <= 1.0
