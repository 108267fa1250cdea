"""Exact multiple-choice knapsack by dynamic programming, and rank correlation. Pure numpy."""

from __future__ import annotations

import numpy as np

MAX_CELLS = 20000


def solve(costs: np.ndarray, damages: np.ndarray, budget: float) -> tuple[np.ndarray, float, float]:
    """Choose one option per item (row) minimising total damage with total cost <= budget.

    costs, damages: [items, options]. Costs are rounded *up* to a grid of at most MAX_CELLS cells, so the
    answer is always feasible for the true costs and optimal for the rounded ones (the rounding loses at
    most one cell per item). Returns (choice per item, total cost, total damage).
    Raises ValueError when even the cheapest options exceed the budget.
    """
    costs = np.asarray(costs, dtype=np.float64)
    damages = np.asarray(damages, dtype=np.float64)
    T, O = costs.shape
    minimum = costs.min(1).sum()
    if minimum > budget + 1e-9:
        raise ValueError(f"infeasible: the smallest possible size is {minimum:.0f}")
    unit = max(budget / MAX_CELLS, 1e-12)
    cap = int(np.floor(budget / unit + 1e-9))
    c = np.ceil(costs / unit - 1e-9).astype(np.int64)
    INF = np.inf
    dp = np.full(cap + 1, INF)
    dp[0] = 0.0
    choice = np.zeros((T, cap + 1), dtype=np.int16)
    for t in range(T):
        new = np.full(cap + 1, INF)
        for o in range(O):
            if c[t, o] > cap:
                continue
            cand = np.full(cap + 1, INF)
            cand[c[t, o]:] = dp[: cap + 1 - c[t, o]] + damages[t, o]
            better = cand < new
            new[better] = cand[better]
            choice[t, better] = o
        dp = new
    if not np.isfinite(dp).any():
        raise ValueError(f"infeasible: the smallest possible size is {minimum:.0f}")
    end = int(np.argmin(dp))
    picks = np.zeros(T, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        o = int(choice[t, end])
        picks[t] = o
        end -= c[t, o]
    total_cost = float(costs[np.arange(T), picks].sum())
    return picks, total_cost, float(damages[np.arange(T), picks].sum())


def brute_force(costs: np.ndarray, damages: np.ndarray, budget: float) -> tuple[np.ndarray, float]:
    """Reference for tests: enumerate every combination (small inputs only)."""
    import itertools

    T, O = np.shape(costs)
    best, best_d = None, np.inf
    for combo in itertools.product(range(O), repeat=T):
        idx = np.arange(T), np.array(combo)
        if costs[idx].sum() <= budget and damages[idx].sum() < best_d:
            best, best_d = np.array(combo), damages[idx].sum()
    return best, best_d


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))
