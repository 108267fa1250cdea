"""OFA's low-rank embedding table: E (V×D) ≈ F (V×k) · P (k×D). Pure numpy.

The best rank-k approximation in Frobenius norm (Eckart–Young) is the truncated SVD. For V ≫ D it is
far cheaper to eigendecompose the D×D Gram matrix G = EᵀE = U Λ Uᵀ (accumulated in float64 over row
blocks, so memory stays bounded): with U_k the top-k eigenvectors, P = U_kᵀ and F = E U_k, and
F·P = E U_k U_kᵀ is exactly the SVD truncation. Energy kept = Σ_{i<k} λ_i / Σ λ_i and the relative
Frobenius error is sqrt(1 − energy).
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


def spectrum(E: np.ndarray) -> Spectrum:
    D = E.shape[1]
    G = np.zeros((D, D), np.float64)
    for r0 in range(0, E.shape[0], BLOCK):
        B = np.asarray(E[r0 : r0 + BLOCK], dtype=np.float64)
        G += B.T @ B
    lam, U = np.linalg.eigh(G)
    order = np.argsort(lam)[::-1]
    return Spectrum(lam[order], U[:, order])


def factors(E: np.ndarray, spec: Spectrum, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(F [V, k] float32, P [k, D] float32) with F·P the best rank-k approximation of E."""
    Uk = spec.vectors[:, :k].astype(np.float32)
    F = np.empty((E.shape[0], k), np.float32)
    for r0 in range(0, E.shape[0], BLOCK):
        F[r0 : r0 + BLOCK] = np.asarray(E[r0 : r0 + BLOCK], dtype=np.float32) @ Uk
    return F, np.ascontiguousarray(Uk.T)
