"""Statistics for sweeps and comparisons: the median's confidence interval, when to stop
repeating, the latency model fit and the tests for "beyond the noise". scipy and statsmodels do
the mathematics; this module only decides which of their results to ask for."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The distribution-free confidence interval of the median, from order statistics.

    The k-th smallest and k-th largest values bound the median with probability
    1 − 2·P(Bin(n, ½) < k); k is the largest rank that keeps that at or above ``confidence``.
    None when there are too few values for any such k (fewer than 6 at 95 %).
    """
    from scipy.stats import binom

    x = sorted(float(v) for v in values)
    n = len(x)
    alpha = 1.0 - confidence
    k = 0
    while k + 1 <= n // 2 and binom.cdf(k, n, 0.5) <= alpha / 2:
        k += 1
    if k == 0:
        return None
    return x[k - 1], x[n - k]


def relative_half_width(values: Sequence[float], confidence: float = CONFIDENCE) -> float | None:
    """The interval's larger distance from the median, as a share of the median."""
    ci = median_ci(values, confidence)
    if ci is None:
        return None
    med = float(np.median(values))
    if med <= 0:
        return None
    return max(med - ci[0], ci[1] - med) / med


@dataclass(frozen=True)
class StopRule:
    """Repeat a point until the median's 95 % CI is within ±target, or the budget runs out."""

    target: float = 0.02
    budget_s: float = 30.0
    min_repeats: int = 6  # the fewest values that give a 95 % interval for the median
    max_repeats: int = 60

    def verdict(self, times: Sequence[float], spent_s: float) -> str | None:
        """Why to stop now ("precision", "budget", "max-repeats"), or None to go on."""
        n = len(times)
        if n >= self.min_repeats:
            rel = relative_half_width(times)
            if rel is not None and rel <= self.target:
                return "precision"
        if n >= self.max_repeats:
            return "max-repeats"
        if n >= 1:
            # Stop when one more repetition would overrun the budget.
            if spent_s + spent_s / n > self.budget_s and n >= min(self.min_repeats, 3):
                return "budget"
        return None


@dataclass
class Fit:
    terms: list[str]  # "fixed", "per_line", "per_token"
    coef: dict[str, float]
    ci: dict[str, tuple[float, float]]  # empty when the fit is exact (as many points as terms)
    r2: float | None  # None for an exact fit: nothing is left over to explain
    observations: int
    dropped: list[str]
    why_dropped: str

    def predict(self, lines: float, tokens: float) -> float:
        x = {"fixed": 1.0, "per_line": lines, "per_token": tokens}
        return sum(self.coef[t] * x[t] for t in self.terms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "terms": self.terms,
            "coef": self.coef,
            "ci95": {k: list(v) for k, v in self.ci.items()},
            "r2": self.r2,
            "observations": self.observations,
            "dropped": self.dropped,
            "why_dropped": self.why_dropped,
            "formula": self.formula(),
        }

    def formula(self) -> str:
        """As a person writes it: "0.28 s + 8.4 ms a line"."""
        parts = []
        if "fixed" in self.terms:
            parts.append(human_seconds(self.coef["fixed"]))
        if "per_line" in self.terms:
            parts.append(f"{human_seconds(self.coef['per_line'])} a line")
        if "per_token" in self.terms:
            parts.append(f"{human_seconds(self.coef['per_token'])} a token")
        return " + ".join(parts).replace("+ -", "- ")


def human_seconds(s: float) -> str:
    a = abs(s)
    if a >= 1:
        return f"{s:.2f} s"
    if a >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def fit_latency(lines: Sequence[float], tokens: Sequence[float], seconds: Sequence[float]) -> Fit | None:
    """Ordinary least squares (statsmodels) of seconds = fixed + per_line·lines + per_token·tokens.

    A term enters only if its variable varies; when lines and tokens move together (the same
    texts, more of them) the per-token term cannot be told from the per-line one and is left out,
    saying so. With exactly as many distinct points as terms the line passes through them: the
    coefficients are given without R² or intervals. None with fewer.
    """
    import statsmodels.api as sm

    L = np.asarray(lines, dtype=float)
    T = np.asarray(tokens, dtype=float)
    y = np.asarray(seconds, dtype=float)
    cols: list[np.ndarray] = [np.ones_like(y)]
    terms = ["fixed"]
    dropped: list[str] = []
    why = ""
    vary_l = np.ptp(L) > 0
    vary_t = np.ptp(T) > 0
    if vary_l:
        cols.append(L)
        terms.append("per_line")
    if vary_t:
        collinear = vary_l and abs(float(np.corrcoef(L, T)[0, 1])) > 0.99
        if collinear:
            dropped.append("per_token")
            why = "tokens grew in step with lines (the same texts, more of them): the per-token cost is folded into the per-line cost"
        else:
            cols.append(T)
            terms.append("per_token")
    distinct = len({(a, b) for a, b in zip(L, T)})
    if terms == ["fixed"] or distinct < len(terms) or len(y) < len(terms):
        return None  # nothing varied that the model could explain
    X = np.column_stack(cols)
    model = sm.OLS(y, X).fit()
    exact = len(y) == len(terms)
    # No residual degrees of freedom in an exact fit: asking for intervals would divide by zero.
    ci = [] if exact else model.conf_int(alpha=1 - CONFIDENCE)
    return Fit(
        terms=terms,
        coef={t: float(c) for t, c in zip(terms, model.params)},
        ci={t: (float(lo), float(hi)) for t, (lo, hi) in zip(terms, ci)},
        r2=None if exact else float(model.rsquared),
        observations=int(len(y)),
        dropped=dropped,
        why_dropped=why,
    )


def differ(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Whether two samples of timings differ beyond the noise: a two-sided Mann–Whitney U test
    (scipy), with each median's 95 % interval beside it."""
    from scipy.stats import mannwhitneyu

    out: dict[str, Any] = {"test": "Mann-Whitney U, two-sided", "n": [len(a), len(b)]}
    # Below 4 against 4 even a complete separation cannot reach p < 0.05: a "no" would mislead.
    if len(a) < 4 or len(b) < 4:
        out.update(p_value=None, beyond_noise=None, why="too few timings to test (4 or more a side)")
        return out
    res = mannwhitneyu(list(a), list(b), alternative="two-sided")
    p = float(res.pvalue)
    out.update(p_value=p, beyond_noise=bool(p < 1 - CONFIDENCE), ci_a=median_ci(a), ci_b=median_ci(b))
    return out


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """B/A pair by pair: the median ratio, its 95 % interval, and a Wilcoxon signed-rank test (scipy)."""
    from scipy.stats import wilcoxon

    ratios = [y / x for x, y in zip(a, b) if x > 0]
    out: dict[str, Any] = {"ratios": ratios, "median_ratio": float(np.median(ratios)) if ratios else math.nan}
    ci = median_ci(ratios)
    out["ci95"] = list(ci) if ci else None
    if len(ratios) >= 6:
        res = wilcoxon(list(a), list(b))
        out["p_value"] = float(res.pvalue)
        out["beyond_noise"] = bool(res.pvalue < 1 - CONFIDENCE)
    else:
        out["p_value"] = None
        out["beyond_noise"] = None
    out["test"] = "Wilcoxon signed-rank, two-sided"
    return out
