"""Classification diagnostics (thesis app. C.3 as corrected in the reading notes) against hand-computed answers."""

import math

import numpy as np
import pytest
import torch

from sbi_inn.diagnostics import classification as cl


def test_bin_edges_are_those_of_appendix_c3():
    expected = [0, .01, .02, .03, .04, .05, .15, .25, .35, .45, .55, .65, .75, .85, .95, .96, .97, .98, .99, 1]
    assert np.allclose(cl.confidence_bin_edges().numpy(), expected, atol=1e-12)


def test_hand_computed_two_class_case():
    """Three samples, two classes. Binned probabilities (class, p, correct?):
    sample 0 (label 0): (0, .9, yes) (1, .1, no); sample 1 (label 1): (0, .2, no) (1, .8, yes);
    sample 2 (label 1): (0, .6, no) (1, .4, yes).
    Bins [.05,.15): .1 -> n 1, correct 0, P .1, gap .1; [.15,.25): .2 -> n 1, c 0, P .2, gap .2;
    [.35,.45): .4 -> n 1, c 1, P .4, gap .6; [.55,.65): .6 -> n 1, c 0, P .6, gap .6;
    [.75,.85): .8 -> n 1, c 1, P .8, gap .2; [.85,.95): .9 -> n 1, c 1, P .9, gap .1."""
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    d = cl.reliability_diagram(probs, labels)
    filled = np.flatnonzero(d["counts"])
    assert filled.tolist() == [5, 6, 8, 10, 12, 13]
    assert d["correct"][filled].tolist() == [0, 0, 1, 0, 1, 1]
    assert np.allclose(d["centers"][filled], [.1, .2, .4, .6, .8, .9])
    assert np.isnan(d["accuracy"][0]) and np.allclose(d["mean_confidence"][filled], [.1, .2, .4, .6, .8, .9])
    gaps = np.array([.1, .2, .6, .6, .2, .1])
    ece = gaps.sum() / 6
    mce = 0.6
    ice = 0.1 * gaps.sum()  # every filled bin is 0.1 wide
    m = cl.classification_calibration(probs, labels)
    assert m["ece"] == pytest.approx(ece) and cl.expected_calibration_error(probs, labels) == pytest.approx(ece)
    assert m["mce"] == pytest.approx(mce) and cl.max_calibration_error(probs, labels) == pytest.approx(mce)
    assert m["ice"] == pytest.approx(ice) and cl.integrated_calibration_error(probs, labels) == pytest.approx(ice)
    assert m["gme"] == pytest.approx((ece * mce * ice) ** (1 / 3))
    assert m["accuracy"] == pytest.approx(2 / 3) and cl.accuracy(probs, labels) == pytest.approx(2 / 3)
    assert math.isnan(m["overconfidence"])  # nothing at 99.7 % confidence


def test_a_binned_probability_is_correct_when_its_class_is_the_label_not_the_argmax():
    """The correction of eq. C.50: with the printed argmax indicator, the 0.3 of a correctly classified sample would
    count as correct and a calibrated model would not have P = Q."""
    probs = torch.tensor([[0.7, 0.3]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 7 + [1] * 3)  # calibrated: 70 % of the 0.7s and 30 % of the 0.3s are the label
    d = cl.reliability_diagram(probs, labels)
    filled = np.flatnonzero(d["counts"])
    assert d["accuracy"][filled].tolist() == pytest.approx([0.3, 0.7])
    # bin centres 0.3 and 0.7 equal Q: no calibration error at all
    assert cl.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert cl.max_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_edges_of_the_unit_interval_and_custom_bins():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d = cl.reliability_diagram(probs, [0, 0])
    assert d["counts"][0] == 2 and d["counts"][-1] == 2  # p = 0 in [0, .01), p = 1 in the closed last bin
    assert d["correct"][0] == 1 and d["correct"][-1] == 1
    custom = cl.reliability_diagram(probs, [0, 1], edges=[0.0, 0.5, 1.0])
    assert custom["counts"].tolist() == [2, 2] and custom["accuracy"].tolist() == [0.0, 1.0]
    assert cl.expected_calibration_error(probs, [0, 1], edges=[0.0, 0.5, 1.0]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="edges must increase strictly from 0 to 1"):
        cl.reliability_diagram(probs, [0, 1], edges=[0.0, 0.6, 0.5, 1.0])


def test_rounding_above_one_is_accepted():
    """float32 softmax outputs can exceed 1 by a rounding error; they are clamped, not refused."""
    probs = torch.tensor([[1.0000001, 0.0]], dtype=torch.float32).double()
    assert cl.reliability_diagram(probs, [0])["counts"][-1] == 1


def test_overconfidence_error():
    probs = np.array([[0.998, 0.001, 0.001]] * 994 + [[0.001, 0.998, 0.001]] * 6 + [[0.5, 0.3, 0.2]] * 10)
    labels = np.array([0] * 994 + [0] * 6 + [2] * 10)  # 6 of the 1000 confident predictions wrong: 0.6 %
    assert cl.overconfidence(probs, labels) == pytest.approx(0.006 / 0.003)
    assert cl.overconfidence(probs, labels, threshold=0.9) == pytest.approx(0.006 / 0.1)
    with pytest.raises(ValueError, match="threshold"):
        cl.overconfidence(probs, labels, threshold=1.0)


def test_calibrated_probabilities_score_low_and_overconfident_ones_high():
    """Labels drawn from the predicted probabilities are calibrated by construction; sharpening the same predictions
    (p^4, renormalised) makes them over-confident, which every measure sees."""
    g = torch.Generator().manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.full((5,), 0.5)).sample((20000,)).double()
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    sharp = probs**4 / (probs**4).sum(1, keepdim=True)
    good, bad = cl.classification_calibration(probs, labels), cl.classification_calibration(sharp, labels)
    assert good["ece"] < 0.01 and good["ice"] < 0.02
    assert bad["ece"] > 3 * good["ece"] and bad["mce"] > good["mce"] and bad["gme"] > 2 * good["gme"]
    assert bad["accuracy"] == good["accuracy"]  # sharpening keeps the argmax


def test_auroc_is_the_rank_statistic():
    assert cl.ood_auroc([0, 1, 2], [3, 4]) == 1.0
    assert cl.ood_auroc([3, 4], [0, 1, 2]) == 0.0
    assert cl.ood_auroc([1, 1], [1, 1, 1]) == 0.5
    assert cl.ood_auroc([0.0, 1.0], [1.0, 2.0]) == 0.875
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300).round(1), rng.normal(0.5, size=200).round(1)  # rounded: many ties
    expected = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b])
    assert cl.ood_auroc(torch.tensor(a), b) == pytest.approx(expected, abs=1e-12)


def test_bits_per_dim_and_entropy():
    assert cl.bits_per_dim([math.log(2) * 8, math.log(2) * 16], 4) == pytest.approx(3.0)
    assert cl.bits_per_dim(np.zeros(3), 2, quantization_step=0.25) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="dim"):
        cl.bits_per_dim([1.0], 0)
    with pytest.raises(ValueError, match="quantization_step"):
        cl.bits_per_dim([1.0], 1, quantization_step=0.0)
    h = cl.prediction_entropy(torch.tensor([[0.25] * 4, [1.0, 0, 0, 0]]))
    assert h.tolist() == pytest.approx([math.log(4), 0.0])


@pytest.mark.parametrize("probs, labels, error, match", [
    ([[0.5, 0.6]], [0], ValueError, "rows must sum to 1"),
    ([[1.5, -0.5]], [0], ValueError, r"must lie in \[0, 1\]"),
    ([[0.5, 0.5]], [2], ValueError, r"labels must lie in \[0, 2\)"),
    ([[0.5, 0.5]], [0, 1], ValueError, r"labels must have shape \(1,\)"),
    ([[0.5, 0.5]], [0.5], TypeError, "labels must be integers"),
    ([[0.5, 0.5]], [1.0], TypeError, "labels must be integers"),  # one contract with fit_classifier: no floats
    ([[0.5, 0.5]], [True], TypeError, "labels must be integers"),
    ([[math.nan, 0.5]], [0], ValueError, "probs contains NaN"),
    ([0.5, 0.5], [0], ValueError, "probs must have 2 dimensions"),
    ([[1.0]], [0], ValueError, "at least 2 classes"),
    ([["a", "b"]], [0], TypeError, "probs must be"),
])
def test_bad_inputs_are_named(probs, labels, error, match):
    with pytest.raises(error, match=match):
        cl.classification_calibration(probs, labels)


def test_exported_from_diagnostics():
    from sbi_inn import diagnostics

    for name in ("classification_calibration", "reliability_diagram", "ood_auroc", "bits_per_dim", "overconfidence"):
        assert getattr(diagnostics, name) is getattr(cl, name)
