"""Summary statistics of timings, from numpy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def describe(values_s: Sequence[float]) -> dict[str, Any]:
    """count, mean, std (sample, ddof=1), CV %, min, max, p50/p90/p95/p99 and the raw values, in seconds."""
    arr = np.asarray(values_s, dtype=float)
    n = int(arr.size)
    if n == 0:
        return {"count": 0, "samples_s": []}
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    mean = float(arr.mean())
    pct = np.percentile(arr, PERCENTILES)
    out: dict[str, Any] = {
        "count": n,
        "mean_s": mean,
        "std_s": std,
        "cv_percent": (100.0 * std / mean) if mean > 0 else 0.0,
        "min_s": float(arr.min()),
        "max_s": float(arr.max()),
    }
    for p, v in zip(PERCENTILES, pct):
        out[f"p{p}_s"] = float(v)
    out["samples_s"] = [float(v) for v in arr]
    return out
