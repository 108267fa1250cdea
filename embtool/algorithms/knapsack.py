"""Exact multiple-choice knapsack (Pareto-frontier dynamic programming), and rank correlation. Pure numpy."""

from __future__ import annotations

import numpy as np

MAX_STATES = 2_000_000


def solve(costs: np.ndarray, damages: np.ndarray, budget: float) -> tuple[np.ndarray, float, float]:
    """Choose one option per item (row) minimising total damage with total cost <= budget. Exact.

    costs, damages: [items, options]. Dynamic programming over the Pareto frontier: after each item only
    the (cost, damage) states that no cheaper state beats are kept, so the true costs are used (no
    rounding) and the optimum is exact. Returns (choice per item, total cost, total damage).
    Raises ValueError when even the cheapest options exceed the budget.
    """
    costs = np.asarray(costs, dtype=np.float64)
    damages = np.asarray(damages, dtype=np.float64)
    T, O = costs.shape
    minimum = costs.min(1).sum()
    if minimum > budget + 1e-9:
        raise ValueError(f"infeasible: the smallest possible size is {minimum:.0f}")
    # cheapest possible cost of the remaining items, to prune states that can no longer fit
    rest = np.concatenate([np.cumsum(costs.min(1)[::-1])[::-1][1:], [0.0]])
    state_c = np.zeros(1)
    state_d = np.zeros(1)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for t in range(T):
        c = (state_c[:, None] + costs[t][None, :]).ravel()
        d = (state_d[:, None] + damages[t][None, :]).ravel()
        parent = np.repeat(np.arange(state_c.size), O)
        option = np.tile(np.arange(O), state_c.size)
        ok = c + rest[t] <= budget + 1e-9
        c, d, parent, option = c[ok], d[ok], parent[ok], option[ok]
        order = np.lexsort((d, c))  # by cost, then damage
        c, d, parent, option = c[order], d[order], parent[order], option[order]
        best_before = np.minimum.accumulate(np.concatenate([[np.inf], d[:-1]]))
        keep = d < best_before  # strictly better than every cheaper (or equal-cost earlier) state
        state_c, state_d = c[keep], d[keep]
        back.append((parent[keep], option[keep]))
        if state_c.size > MAX_STATES:
            raise ValueError("the mixed-precision problem is too large to solve exactly")
    i = int(np.argmin(state_d))
    total_c, total_d = float(state_c[i]), float(state_d[i])
    picks = np.zeros(T, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        parent, option = back[t]
        picks[t] = option[i]
        i = int(parent[i])
    return picks, total_c, total_d


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
