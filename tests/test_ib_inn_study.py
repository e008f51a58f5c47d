"""The IB-INN beta study's bookkeeping (studies/ib_inn_beta.py): beta selection, the target verdict and the paired
differences its table reports, on hand-made results whose answers are known."""

import json
import math

import pytest
from _studies import load_study


@pytest.fixture(scope="module")
def study():
    return load_study("ib_inn_beta")


def _run(acc, ece, auroc=0.8, beta=None):
    row = {"accuracy": acc, "ece": ece, "mce": 2 * ece, "ice": ece, "gme": ece, "auroc_mean": auroc,
           "auroc_msp_mean": auroc, "auroc": {"a": auroc}, "auroc_msp": {"a": auroc}}
    if beta is not None:
        row.update(beta=beta, gamma=beta / 8)
    return row


def _runs():
    """Three seeds; beta=8 is within 2 points of the feed-forward accuracy and has the lowest ECE there."""
    return {"beta=1": [_run(0.80, 0.010, 0.95, 1)] * 3,
            "beta=8": [_run(0.95, 0.012, 0.90, 8), _run(0.95, 0.014, 0.90, 8), _run(0.95, 0.016, 0.90, 8)],
            "beta=64": [_run(0.96, 0.020, 0.85, 64)] * 3,
            "feed-forward": [_run(0.96, 0.015, 0.5), _run(0.96, 0.015, 0.5), _run(0.96, 0.021, 0.5)],
            "i-RevNet": [_run(0.96, 0.018, 0.4)] * 3,
            "beta=8 (no smoothing)": [_run(0.95, 0.005, 0.9, 8)] * 3,
            "feed-forward (no smoothing)": [_run(0.96, 0.006, 0.5)] * 3}


def test_paired_difference_is_the_mean_and_standard_error_of_the_per_seed_differences(study):
    m, se = study.paired_difference(_runs(), "beta=8", "feed-forward")
    d = [0.012 - 0.015, 0.014 - 0.015, 0.016 - 0.021]  # -0.003, -0.001, -0.005
    mean = sum(d) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 2)
    assert m == pytest.approx(mean) and se == pytest.approx(sd / math.sqrt(3))
    assert math.isnan(study.paired_difference({"a": [_run(1, 0.1)], "b": [_run(1, 0.2)]}, "a", "b")[1])
    with pytest.raises(ValueError):  # unpaired seeds are an error, not a silent truncation
        study.paired_difference({"a": [_run(1, 0.1)] * 2, "b": [_run(1, 0.2)]}, "a", "b")


def test_selection_target_and_table(study, tmp_path):
    runs = _runs()
    summary = study.summarise(runs)
    best = study.select_beta(summary, [1, 8, 64])
    assert best == 8  # beta=64 has the lower error rate but the higher ECE; beta=1 is 16 points behind
    target = study.target_check(summary, best)
    assert target["accuracy_within_2_points_of_feed_forward"] and target["ece_below_feed_forward"]
    assert not target["ece_below_class_nll"] and target["auroc_above_feed_forward"]
    result = {"description": "toy", "dim": 2, "num_classes": 2, "num_train": 10, "num_test": 10, "seeds": [0, 1, 2],
              "minutes": 0.1, "summary": summary, "target": target, "selected_beta": best, "selected_gamma": 1.0,
              "target_without_smoothing": study.target_check(summary, best, " (no smoothing)"), "runs": runs}
    (tmp_path / "gmm.json").write_text(json.dumps(result))
    study.write_table(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "beta=8 *" in text and "ece_below_class_nll NO" in text
    assert "minus feed-forward -0.30 ± 0.12; minus beta=1 +0.40 ± 0.12" in text  # the test above, in points
    assert "minus feed-forward (no smoothing) -0.10 ± 0.00" in text
