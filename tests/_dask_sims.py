"""Simulators for ``tests/test_distributed.py`` in a module of their own, so Dask worker processes (which import
what a pickled task names) can import them as ``_dask_sims``."""

from __future__ import annotations

import os
import time

import torch


class Marked:
    """``y = (x0, x1, x0 * x1) + 0.1 * noise`` ``(n, 2) -> (n, 3)``, drawn from ``generator``, that misbehaves on the
    chunk whose first parameter ``x[0, 0]`` equals a given value (chunk ``i``'s first prior draw, known in advance
    from the seed tree): ``sleep_on`` sleeps ``seconds`` first (so later chunks finish before it; creating
    ``sleep_marker`` when given), ``raise_on``
    raises ``ValueError``, ``die_on`` kills its worker process the first time (when ``marker`` does not exist yet;
    it creates it). ``nan_on`` returns NaN for that chunk's first row."""

    def __init__(self, *, sleep_on: float | None = None, seconds: float = 0.0, raise_on: float | None = None,
                 die_on: float | None = None, marker: str | None = None, nan_on: float | None = None,
                 sleep_marker: str | None = None):
        self.sleep_on, self.seconds, self.raise_on = sleep_on, seconds, raise_on
        self.die_on, self.marker, self.nan_on, self.sleep_marker = die_on, marker, nan_on, sleep_marker

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        first = float(x[0, 0])
        if first == self.sleep_on:
            if self.sleep_marker:
                open(self.sleep_marker, "w").close()
            time.sleep(self.seconds)
        if first == self.raise_on:
            raise ValueError(f"simulator failed on purpose at x[0, 0] = {first}")
        if first == self.die_on and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(3)  # the worker process dies without a Python exception
        eps = torch.randn((len(x), 3), generator=generator)
        y = torch.stack([x[:, 0], x[:, 1], x[:, 0] * x[:, 1]], -1) + 0.1 * eps
        if first == self.nan_on:
            y[0, 1] = float("nan")
        return y
