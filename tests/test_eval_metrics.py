"""Metrics against small cases computed by hand (and a brute-force check of the AUROC rank statistic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scanner.evaluation import metrics as M


# ---------------------------------------------------------------- AUROC
def test_auroc_hand_case_with_a_tie():
    # pairs (pos, neg): (.9,.5)=1 (.9,.1)=1 (.5,.5)=1/2 (.5,.1)=1  ->  3.5 / 4
    assert M.auroc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)


def test_auroc_extremes_and_undefined():
    assert M.auroc([1, 1, 0], [3, 2, 1]) == 1.0
    assert M.auroc([1, 1, 0], [1, 2, 3]) == 0.0
    assert M.auroc([1, 0, 1, 0], [7, 7, 7, 7]) == 0.5  # all tied: no information
    assert math.isnan(M.auroc([1, 1], [0.2, 0.3]))  # no negatives: undefined, never 0.5
    assert math.isnan(M.auroc([0, 0], [0.2, 0.3]))


def test_auroc_three_by_two_by_hand():
    # positives .8 .4 .4 ; negatives .4 .1
    # .8 beats both (2), each .4 ties .4 (0.5) and beats .1 (1) -> 2 + 1.5 + 1.5 = 5 of 6 pairs
    assert M.auroc([1, 1, 1, 0, 0], [0.8, 0.4, 0.4, 0.4, 0.1]) == pytest.approx(5 / 6)


def test_auroc_equals_pairwise_count_on_random_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.random(40) < 0.4
        s = rng.integers(0, 5, 40).astype(float)  # many ties
        if y.all() or (~y).all():
            continue
        pos, neg = s[y][:, None], s[~y][None, :]
        brute = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
        assert M.auroc(y, s) == pytest.approx(brute)
        fpr, tpr, _ = M.roc_curve(y, s)
        assert M.trapezoid(fpr, tpr) == pytest.approx(brute)


def test_average_ranks():
    assert M.average_ranks(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_roc_curve_points():
    fpr, tpr, thr = M.roc_curve([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thr[0] == np.inf and thr[1:].tolist() == [0.9, 0.5, 0.1]


# ---------------------------------------------------------------- OSCR
def test_oscr_hand_case():
    # known (score, correct): (.9, yes) (.8, no) (.6, yes) (.3, yes); unknown: .7 .2
    # sweep: .9 -> (0, 1/4) ; .8 -> (0, 1/4) ; .7 -> (1/2, 1/4) ; .6 -> (1/2, 2/4) ; .3 -> (1/2, 3/4) ; .2 -> (1, 3/4)
    # area = 1/2 * 1/4 + 1/2 * 3/4 = 0.5
    correct, ks, us = [1, 0, 1, 1], [0.9, 0.8, 0.6, 0.3], [0.7, 0.2]
    fpr, ccr, _ = M.oscr_curve(correct, ks, us)
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0]
    assert ccr.tolist() == [0.0, 0.25, 0.25, 0.25, 0.5, 0.75, 0.75]
    assert M.oscr(correct, ks, us) == pytest.approx(0.5)


def test_oscr_does_not_force_ccr_one_at_fpr_one():
    # half the known queries are misclassified: the real curve ends at (1, 0.5), so the area is 0.5, not more.
    # (An implementation that appends the point (1, 1) would report 0.75 here.)
    fpr, ccr, _ = M.oscr_curve([1, 0], [0.9, 0.4], [0.6])
    assert (fpr[-1], ccr[-1]) == (1.0, 0.5)
    assert M.oscr([1, 0], [0.9, 0.4], [0.6]) == pytest.approx(0.5)


def test_oscr_ties_move_both_rates_at_once():
    # a known (correct) and an unknown query with the same score: one diagonal step (0,0) -> (1,1)
    assert M.oscr([1], [0.5], [0.5]) == pytest.approx(0.5)
    # perfect separation, all correct: area 1
    assert M.oscr([1, 1], [0.9, 0.8], [0.1, 0.2]) == pytest.approx(1.0)
    # perfect separation, nothing correct: area 0
    assert M.oscr([0, 0], [0.9, 0.8], [0.1, 0.2]) == 0.0
    assert math.isnan(M.oscr([1], [0.5], []))


# ---------------------------------------------------------------- PRF1 and confusion
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "c", "c"]


def test_precision_recall_f1_by_hand():
    r = M.precision_recall_f1(Y_TRUE, Y_PRED, ["a", "b", "c"])
    a, b, c = (r["per_class"][k] for k in "abc")
    # a: tp 2, fp 0, fn 1 ; b: tp 1, fp 1, fn 1 ; c: tp 1, fp 1, fn 0
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["macro_precision"] == pytest.approx(2 / 3)
    assert r["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_unknown_predictions_lower_recall_and_unpredicted_class_scores_zero():
    r = M.precision_recall_f1(["a", "a", "b"], ["a", "unknown", "a"], ["a", "b"])
    assert r["per_class"]["a"]["precision"] == pytest.approx(0.5)
    assert r["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_confusion_matrix_by_hand():
    m = M.confusion_matrix(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert m.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # rows and columns may differ: true unknown classes as rows, `unknown` as a predicted column
    m = M.confusion_matrix(["a", "x", "x"], ["a", "unknown", "a"], ["a", "x"], ["a", "unknown"])
    assert m.tolist() == [[1, 0], [1, 1]]


def test_accuracy_and_balanced_accuracy():
    assert M.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # positives: 3 of 4 right (0.75); negatives: 0 of 1 right (0) -> 0.375
    assert M.balanced_accuracy_binary([1, 1, 1, 1, 0], [1, 1, 1, 0, 1]) == pytest.approx(0.375)


def test_nan_to_none_for_json():
    assert M.nan_to_none({"a": float("nan"), "b": [1.0, np.float32(2.0)], "c": {"d": float("inf")}}) == {
        "a": None, "b": [1.0, 2.0], "c": {"d": None}}
