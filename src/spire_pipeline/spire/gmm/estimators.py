"""Estimators of the mixing weight: gradient descent on the (projected) DDPM loss in the bias
``b``, maximum likelihood given the means, and the spectral estimate of the means themselves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProjectedDDPMLoss:
    """The ``b``-dependent part of the DDPM loss for many data sets at once.

    Data set ``c`` owns the contiguous rows ``starts[c] : starts[c] + counts[c]`` of the
    projections ``p``. Columns are noise nodes ``m`` = (timestep, value of ``g``) with ``a``,
    ``s``, ``weight`` of shape ``(M,)``; ``g`` is ``(1, M)`` (quadrature nodes shared by all
    rows) or ``(F, M)`` (one draw per row). Per row and node the loss is
    ``weight (a g - s p + s r tanh(a r (a p + s g) + b))^2`` with ``weight`` = node weight
    x ``a^2 / K``. Evaluated in row chunks, so memory stays ``O(F)``.
    """

    p: np.ndarray
    r: float
    a: np.ndarray
    s: np.ndarray
    g: np.ndarray
    weight: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    chunk_rows: int = 2048

    @classmethod
    def build(
        cls,
        p: np.ndarray,
        counts: np.ndarray,
        r: float,
        a: np.ndarray,
        s: np.ndarray,
        *,
        g: np.ndarray,
        g_weight: np.ndarray,
    ) -> ProjectedDDPMLoss:
        """From projections ``p`` (F,), noise levels ``a, s`` (K,) and values of ``g = e.z``.

        ``g`` is ``(Q,)`` quadrature nodes with weights ``g_weight`` (Q,), or ``(F, K)`` draws
        (one per row and timestep; pass ``g_weight=[1.0]``). Timesteps weigh equally.
        """
        counts = np.asarray(counts, dtype=np.int64)
        k = len(a)
        if g.ndim == 1:  # quadrature: nodes (timestep, g_q), row-independent
            q = len(g)
            g_nodes = np.tile(g, k)[None, :]
            node_w = np.tile(np.asarray(g_weight, dtype=float), k)
        else:  # draws: one g per row and timestep
            q = 1
            g_nodes = np.asarray(g, dtype=float).reshape(len(p), k)
            node_w = np.ones(k)
        a_m, s_m = np.repeat(a, q), np.repeat(s, q)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(
            np.asarray(p, dtype=float),
            float(r),
            a_m,
            s_m,
            g_nodes,
            node_w * a_m**2 / k,
            starts,
            counts,
        )

    def per_row(self, b: np.ndarray, derivative: bool = False) -> np.ndarray:
        """Per-row loss (or its derivative in ``b``), summed over noise nodes (F,)."""
        b_row = np.repeat(np.asarray(b, dtype=float), self.counts)
        sr = self.s * self.r
        coef = (2.0 * sr * self.weight) if derivative else self.weight
        out = np.empty(len(self.p))
        for i in range(0, len(self.p), self.chunk_rows):
            rows = slice(i, i + self.chunk_rows)
            p = self.p[rows, None]
            g = self.g[rows] if self.g.shape[0] > 1 else self.g
            t = self.a * self.r * (self.a * p + self.s * g)
            t += b_row[rows, None]
            np.tanh(t, out=t)
            u = self.a * g - self.s * p
            u += sr * t
            if derivative:
                np.multiply(t, t, out=t)
                np.subtract(1.0, t, out=t)
                u *= t
            else:
                u *= u
            out[rows] = u @ coef
        return out

    def loss(self, b: np.ndarray) -> np.ndarray:
        """Loss of each data set at its own bias ``b`` (C,)."""
        return np.add.reduceat(self.per_row(b, derivative=False), self.starts) / self.counts

    def grad(self, b: np.ndarray) -> np.ndarray:
        """Derivative of :meth:`loss` with respect to each data set's ``b`` (C,)."""
        return np.add.reduceat(self.per_row(b, derivative=True), self.starts) / self.counts


def gradient_descent(
    loss: ProjectedDDPMLoss, b_init: float, lr: float, iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain gradient descent on every data set's ``b`` at once.

    Returns the final ``b`` (C,), the trajectory ``(iterations + 1, C)`` and the final gradient.
    """
    b = np.full(len(loss.counts), float(b_init))
    trajectory = np.empty((iterations + 1, len(b)))
    trajectory[0] = b
    for it in range(iterations):
        b = b - lr * loss.grad(b)
        trajectory[it + 1] = b
    return b, trajectory, loss.grad(b)


def mle_mixing_weight(
    p: np.ndarray, counts: np.ndarray, r: float, max_iterations: int = 100, tol: float = 1e-12
) -> np.ndarray:
    """Maximum-likelihood ``pi`` given ``mu`` for each data set (rows of ``p`` by ``counts``).

    With ``t_i = tanh(r p_i)`` and ``c = 2 pi - 1`` the log-likelihood is
    ``sum_i log(1 + c t_i)`` + const, concave in ``c``; its root ``sum t/(1 + c t) = 0`` is found
    by Newton's method kept inside a shrinking bracket (bisection when a step leaves it).
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    t = np.tanh(r * p)
    c = np.zeros(len(counts))
    lo, hi = -np.ones(len(counts)), np.ones(len(counts))
    for _ in range(max_iterations):
        denom = 1.0 + np.repeat(c, counts) * t
        score = np.add.reduceat(t / denom, starts)
        curv = -np.add.reduceat((t / denom) ** 2, starts)
        lo = np.where(score > 0, c, lo)
        hi = np.where(score < 0, c, hi)
        step = np.where(curv < 0, -score / np.minimum(curv, -1e-300), 0.0)
        new = c + step
        outside = (new <= lo) | (new >= hi)
        new = np.where(outside, 0.5 * (lo + hi), new)
        done = np.abs(new - c) < tol
        c = new
        if done.all():
            break
    return 0.5 * (1.0 + c)


def spectral_mean(x: np.ndarray, rng: np.random.Generator, iterations: int = 100) -> np.ndarray:
    """The mixture's mean ``mu`` estimated from the samples alone (up to its sign).

    For ``pi N(mu, I) + (1 - pi) N(-mu, I)`` the second moment is ``E[x x^T] = I + mu mu^T``
    whatever ``pi``: its top eigenvector is ``mu / |mu|`` and its top eigenvalue ``1 + |mu|^2``.
    Power iteration on the sample second moment gives ``sqrt(max(lambda - 1, 0)) v``. With few
    samples in many dimensions the sample matrix's noise eigenvalues (up to about
    ``(1 + sqrt(d / n))^2``) reach the signal's, and the direction is lost: this is the error
    that grows with the dimension when the means are not known.
    """
    n, d = x.shape
    v = rng.standard_normal(d).astype(x.dtype)  # the samples' precision: no upcast copies
    v /= np.linalg.norm(v)
    for _ in range(iterations):
        w = x.T @ (x @ v) / n
        v = w / np.linalg.norm(w)
    lam = float(v @ (x.T @ (x @ v)) / n)
    return np.sqrt(max(lam - 1.0, 0.0)) * v.astype(float)
