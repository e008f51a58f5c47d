"""Diagnostics for posterior estimators (calibration, re-simulation and point errors, two-sample tests, tables) and
for probabilistic classifiers (:mod:`sbi_inn.diagnostics.classification`: calibration errors, OoD AUROC, bits/dim).

Every posterior metric is a pure function of arrays (torch tensors or numpy arrays) in the ``sample_batched`` layout:
posterior samples ``(n, B, D)``, ground truths ``(B, D)``, observations ``(B, M)``. Arrays come back as torch
tensors, scalars as Python floats. Plots of these numbers live in :mod:`sbi_inn.plots`; :func:`report` computes
them all on a test set and draws the figures (what ``sbi-inn diagnose`` writes).
"""

from sbi_inn.diagnostics.calibration import (
    calibration_curve,
    calibration_error,
    calibration_summary,
    coverage_indicators,
    default_alphas,
    expected_coverage,
    sbc_ranks,
    sbc_uniformity,
)
from sbi_inn.diagnostics.classification import (
    accuracy,
    bits_per_dim,
    classification_calibration,
    confidence_bin_edges,
    expected_calibration_error,
    integrated_calibration_error,
    max_calibration_error,
    ood_auroc,
    overconfidence,
    prediction_entropy,
    reliability_diagram,
)
from sbi_inn.diagnostics.compare import compare, to_csv, to_markdown
from sbi_inn.diagnostics.metrics import (
    bootstrap,
    map_error,
    map_error_per_parameter,
    map_resimulation_error,
    mean_shift,
    point_estimate,
    posterior_contraction,
    posterior_zscore,
    resimulation_error,
)
from sbi_inn.diagnostics.report import Report, report
from sbi_inn.diagnostics.two_sample import c2st, c2st_batched, mmd, mmd_batched

__all__ = [
    "Report",
    "accuracy",
    "bits_per_dim",
    "bootstrap",
    "c2st",
    "c2st_batched",
    "calibration_curve",
    "calibration_error",
    "calibration_summary",
    "classification_calibration",
    "compare",
    "confidence_bin_edges",
    "coverage_indicators",
    "default_alphas",
    "expected_calibration_error",
    "expected_coverage",
    "integrated_calibration_error",
    "map_error",
    "map_error_per_parameter",
    "map_resimulation_error",
    "max_calibration_error",
    "mean_shift",
    "mmd",
    "mmd_batched",
    "ood_auroc",
    "overconfidence",
    "point_estimate",
    "posterior_contraction",
    "posterior_zscore",
    "prediction_entropy",
    "reliability_diagram",
    "report",
    "resimulation_error",
    "sbc_ranks",
    "sbc_uniformity",
    "to_csv",
    "to_markdown",
]
