"""How far apart two accuracies must be to mean something: bootstrap intervals over questions.

    low, high = accuracy_interval([c0, c1, c2])                 # one model over 3 seeds, 95 %, in %
    d = paired_difference([(a0, b0), (a1, b1), (a2, b2)])       # model a - model b, one pair per seed

``correct`` is one 0/1 per question. A paired difference compares two models on the same questions
(one pair of vectors per seed, each seed with its own questions); its interval resamples questions,
independently in each seed, and averages the per-seed differences, so it holds the noise of which
questions were asked. The seed-to-seed spread (training noise: data order, initialisation, world) is
reported beside it, and ``Difference.verdict`` asks for all three: an interval that excludes 0, every
seed on the same side, and an exact sign test (McNemar) on the questions where the two models disagree,
pooled over seeds, below 0.05 (the percentile bootstrap alone is too confident when only a handful of
questions differ: 4 of 4 in one direction give an interval above 0, but p = 0.125).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000
LEVEL = 0.95


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _as_matrix(correct: Sequence[float]) -> np.ndarray:
    values = np.asarray(correct, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of 0/1 per question, got shape {values.shape}")
    return values


def _bootstrap_mean(vectors: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """Bootstrap samples of the mean over ``vectors`` of each vector's mean (x 100), every vector's
    entries resampled with replacement, independently."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for values in vectors:
        picks = rng.integers(0, values.size, size=(resamples, values.size))
        total += values[picks].mean(axis=1) * 100
    return total / len(vectors)


def accuracy_interval(
    per_seed: Sequence[Sequence[float]], *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval (%) of the accuracy averaged over seeds, questions resampled within
    each seed (``per_seed``: one 0/1 vector per seed; one seed: ``[correct]``)."""
    if not per_seed:
        raise ValueError("need at least one seed's answers")
    return _percentiles(_bootstrap_mean([_as_matrix(c) for c in per_seed], resamples, seed), level)


@dataclass(frozen=True)
class Difference:
    """Accuracy of a minus accuracy of b (points), over seeds."""

    per_seed: tuple[float, ...]
    mean: float
    low: float
    high: float
    level: float = LEVEL
    sign_p: float = 0.0
    """Exact two-sided McNemar p-value over the questions answered differently (all seeds pooled)."""

    @property
    def std(self) -> float:
        """Standard deviation of the per-seed differences (0 for one seed)."""
        return float(np.std(self.per_seed, ddof=1)) if len(self.per_seed) > 1 else 0.0

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0, no seed disagrees in sign (a zero difference disagrees), and the sign
        test's p < 1 - level."""
        same_side = all(d > 0 for d in self.per_seed) or all(d < 0 for d in self.per_seed)
        return same_side and (self.low > 0 or self.high < 0) and self.sign_p < 1 - self.level

    def verdict(self) -> str:
        if self.distinguishable:
            return "better" if self.mean > 0 else "worse"
        return "not distinguishable from noise"

    def reading(self) -> str:
        """The verdict with the sign test's p-value."""
        return f"{self.verdict()} (p = {self.sign_p:.2g})"

    def cell(self) -> str:
        seeds = " / ".join(f"{d:+.1f}" for d in self.per_seed)
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}] ({seeds})"


def paired_difference(
    pairs: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Difference:
    """``pairs``: per seed, (a's 0/1 per question, b's 0/1 on the same questions, same order)."""
    if not pairs:
        raise ValueError("need at least one (a, b) pair")
    diffs = []
    for i, (a, b) in enumerate(pairs):
        a, b = _as_matrix(a), _as_matrix(b)
        if a.shape != b.shape:
            raise ValueError(f"seed {i}: {a.size} answers for a but {b.size} for b; a pair needs the same questions")
        diffs.append(a - b)
    per_seed = [float(d.mean() * 100) for d in diffs]
    low, high = _percentiles(_bootstrap_mean(diffs, resamples, seed), level)
    wins = sum(int((d > 0).sum()) for d in diffs)
    losses = sum(int((d < 0).sum()) for d in diffs)
    return Difference(tuple(per_seed), float(np.mean(per_seed)), low, high, level, sign_test(wins, losses))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial p-value of ``wins`` against ``losses`` under a fair coin (McNemar's
    exact test on discordant pairs); 1.0 when there are none."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def above_chance(hits: int, n: int, chance: float) -> float:
    """Exact one-sided binomial p-value of ``hits`` or more right out of ``n`` for a guesser right with
    probability ``chance`` each time; 1.0 when ``n`` is 0."""
    if not 0.0 <= chance <= 1.0:
        raise ValueError(f"chance must lie in [0, 1], got {chance}")
    if n == 0 or hits <= 0 or chance == 1.0:
        return 1.0
    if hits > n or chance == 0.0:
        return 0.0
    # In logs: the binomial coefficients of a few hundred questions pooled over seeds (C(1080, 540) is
    # about 10^323) overflow a float, and their products with chance^i underflow one.
    log_p, log_q = math.log(chance), math.log1p(-chance)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(hits, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))
