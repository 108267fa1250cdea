"""OFA's low-rank embedding table: E (V×D) ≈ F (V×k) · P (k×D). Pure numpy.

The best rank-k approximation in Frobenius norm (Eckart–Young) is the truncated SVD. For V ≫ D it is
far cheaper to eigendecompose the D×D Gram matrix G = EᵀE = U Λ Uᵀ (accumulated in float64 over row
blocks, so memory stays bounded): with U_k the top-k eigenvectors, P = U_kᵀ and F = E U_k, and
F·P = E U_k U_kᵀ is exactly the SVD truncation. Energy kept = Σ_{i<k} λ_i / Σ λ_i and the relative
Frobenius error is sqrt(1 − energy).

Corpus-aware (`factorize --corpus`): with a weight w_i ≥ 0 per row (its token's frequency in the corpus,
add-one smoothed), the basis comes from G_w = Eᵀ diag(w) E instead. U_k then minimises the weighted error
Σ_i w_i ‖e_i − e_i U_k U_kᵀ‖², the expected squared error of the rows the corpus' text actually looks up,
so a language's frequent tokens keep their precision and unused rows give way. F = E U_k as before (the
projection onto the chosen basis is still each row's best approximation in it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 16384


@dataclass
class Spectrum:
    eigenvalues: np.ndarray  # descending, float64 [D]
    vectors: np.ndarray  # [D, D], column i = eigenvector of eigenvalues[i]

    def energy(self, k: int) -> float:
        lam = np.clip(self.eigenvalues, 0, None)
        return float(lam[:k].sum() / max(lam.sum(), 1e-300))

    def rel_error(self, k: int) -> float:
        return float(np.sqrt(max(0.0, 1.0 - self.energy(k))))

    def rank_for_energy(self, energy: float) -> int:
        lam = np.clip(self.eigenvalues, 0, None)
        c = np.cumsum(lam) / max(lam.sum(), 1e-300)
        return int(min(len(lam), np.searchsorted(c, energy - 1e-12) + 1))

    def rank_for_error(self, max_error: float) -> int:
        return self.rank_for_energy(1.0 - max_error**2)


def _blocks(E: np.ndarray):
    for r0 in range(0, E.shape[0], BLOCK):
        yield r0, np.asarray(E[r0 : r0 + BLOCK], dtype=np.float64)


def _checked(weights: np.ndarray, rows: int) -> np.ndarray:
    weights = np.asarray(weights, np.float64)
    if weights.shape != (rows,) or not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError("row weights must be one finite non-negative number per row, not all zero")
    return weights


def gram(E: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Eᵀ diag(w) E in float64, over row blocks (w = 1 when None)."""
    G = np.zeros((E.shape[1],) * 2, np.float64)
    for r0, B in _blocks(E):
        G += (B.T * weights[r0 : r0 + len(B)]) @ B if weights is not None else B.T @ B
    return G


def grams(E: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(EᵀE, Eᵀ diag(w) E) in one pass over E: the corpus-weighted basis, and the whole table's energy it keeps."""
    weights = _checked(weights, E.shape[0])
    G, Gw = np.zeros((E.shape[1],) * 2, np.float64), np.zeros((E.shape[1],) * 2, np.float64)
    for r0, B in _blocks(E):
        G += B.T @ B
        Gw += (B.T * weights[r0 : r0 + len(B)]) @ B
    return G, Gw


def decompose(G: np.ndarray) -> Spectrum:
    """The eigendecomposition of a Gram matrix, eigenvalues descending."""
    lam, U = np.linalg.eigh(G)
    order = np.argsort(lam)[::-1]
    return Spectrum(lam[order], U[:, order])


def spectrum(E: np.ndarray, weights: np.ndarray | None = None) -> Spectrum:
    """The eigendecomposition of Eᵀ diag(weights) E (plain EᵀE without weights), eigenvalues descending."""
    return decompose(gram(E, None if weights is None else _checked(weights, E.shape[0])))


def kept_energy(G: np.ndarray, basis: np.ndarray) -> float:
    """Share of tr(G) that the columns of `basis` (orthonormal [D, k]) keep: tr(UᵀGU)/tr(G), so that
    1 − kept_energy is the squared relative error of projecting onto the basis under G's weighting."""
    return float(np.einsum("ij,ij->", basis, G @ basis) / max(np.trace(G), 1e-300))


def row_weights(counts: np.ndarray, rows: int, smoothing: float = 1.0) -> np.ndarray:
    """Per-row weights from token counts (ids beyond `counts` count 0): count + smoothing."""
    w = np.full(rows, smoothing, np.float64)
    n = min(rows, len(counts))
    w[:n] += np.asarray(counts[:n], np.float64)
    return w


def factors(E: np.ndarray, spec: Spectrum, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(F [V, k] float32, P [k, D] float32) with F·P the best rank-k approximation of E."""
    Uk = spec.vectors[:, :k].astype(np.float32)
    F = np.empty((E.shape[0], k), np.float32)
    for r0 in range(0, E.shape[0], BLOCK):
        F[r0 : r0 + BLOCK] = np.asarray(E[r0 : r0 + BLOCK], dtype=np.float32) @ Uk
    return F, np.ascontiguousarray(Uk.T)
