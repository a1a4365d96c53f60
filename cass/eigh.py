"""Batched eigendecomposition of small symmetric matrices (the spectral step's Gram matrices).

CASS decomposes one d x d float64 Gram matrix ``K^T K / sqrt(d)`` per head
and crop (d = 64 for ViT-B and ViT-L): hundreds per image. On CUDA,
``torch.linalg.eigh`` solves such a batch one matrix at a time (tens of
thousands of small kernel launches per image). :func:`jacobi_eigh` solves the
whole batch in one Triton kernel launch: a parallel cyclic Jacobi method, one
matrix per program.

Method. Each program holds its matrix ``A`` and the accumulated rotations
``V`` (``A_0 = V A V^T`` throughout). A sweep has ``n - 1`` rounds; the
round-robin ("circle") schedule pairs every index with another one in each
round, so that every pair (p, q) meets once per sweep and the ``n / 2``
rotations of a round touch disjoint rows and columns. The rotation of pair
(p, q) is the classical one that zeroes ``a_pq``::

    theta = (a_qq - a_pp) / (2 a_pq),  t = sign(theta) / (|theta| + sqrt(theta^2 + 1)),
    c = 1 / sqrt(t^2 + 1),  s = t c,   J_pp = J_qq = c,  J_pq = s,  J_qp = -s,

and the ``n / 2`` rotations of a round form one orthogonal matrix ``J``
applied as ``A <- J^T A J``, ``V <- V J`` with three matrix products. Sweeps
continue until the off-diagonal part is below ``tol`` times the Frobenius
norm (Jacobi converges quadratically: about 8 sweeps for n = 64 with distinct
eigenvalues; large clusters of equal nonzero eigenvalues converge more slowly,
about 24 sweeps for a cluster of 20, hence the cap of 30). Then the
diagonal holds the eigenvalues and the columns of ``V`` the eigenvectors.
Every eigenvalue is within ``||off-diagonal||_2 <= tol ||A||_F`` of the exact
one (Weyl), so ``tol = 1e-14`` meets the 1e-9 budget with room to spare.

Matrices whose side is not a power of two are padded with zero rows and
columns: a zero ``a_pq`` gives the identity rotation, so the padding never
mixes with the matrix and is sliced off.

Deterministic: no atomics, a fixed schedule; the same input gives the same
bits run to run. On the CPU the kernel runs in Triton's interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported, as the tests do); the
project's CPU path keeps LAPACK (:func:`symmetric_eigh`).
"""
from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds may not ship Triton
    triton = None

SOLVERS = ("auto", "lapack", "jacobi")
MAX_SWEEPS = 30
TOLERANCE = 1e-14


def round_robin(n: int) -> Tensor:
    """Partner of every index in each of the ``n - 1`` rounds of the circle schedule.

    Index 0 stays fixed, the others rotate: in round r, indices ``x, y >= 1``
    with ``(x - 1) + (y - 1) = 2 r (mod n - 1)`` are paired, and the one left
    over (``x - 1 = r``) is paired with 0.

    Returns:
        (n - 1, n) int32; row r is an involution without fixed points, and
        every pair appears in exactly one row.
    """
    if n < 2 or n % 2:
        raise ValueError(f"the round-robin schedule needs an even n >= 2, got {n}")
    m = n - 1
    table = torch.empty(m, n, dtype=torch.int32)
    x = torch.arange(m)
    for r in range(m):
        y = (2 * r - x) % m
        partner = torch.where(y == x, 0, y + 1)
        table[r, 1:] = partner
        table[r, 0] = r + 1
    return table


def _jacobi_program(a_ptr, w_ptr, v_ptr, sweeps_ptr, schedule_ptr, tol2,
                    N: tl.constexpr, MAX_SWEEPS: tl.constexpr):  # pragma: no cover - traced by Triton
    """One matrix: ``a_ptr`` (N, N) in, eigenvalues ``w_ptr`` (N,) and vectors ``v_ptr`` (N, N) out."""
    pid = tl.program_id(0)
    rows = tl.arange(0, N)
    offsets = rows[:, None] * N + rows[None, :]
    a = tl.load(a_ptr + pid * N * N + offsets)
    eye = rows[:, None] == rows[None, :]
    v = tl.where(eye, 1.0, 0.0).to(tl.float64)
    norm2 = tl.sum(tl.sum(a * a, axis=1), axis=0)
    off2 = tl.sum(tl.sum(tl.where(eye, 0.0, a * a), axis=1), axis=0)
    sweep = 0
    while (sweep < MAX_SWEEPS) & (off2 > tol2 * norm2):
        for r in range(N - 1):
            partner = tl.load(schedule_ptr + r * N + rows)
            right = rows[None, :] == partner[:, None]  # [i, j]: j is i's partner
            below = rows[:, None] == partner[None, :]  # [i, j]: i is j's partner
            diag = tl.sum(tl.where(eye, a, 0.0), axis=1)
            diag_partner = tl.sum(tl.where(right, diag[None, :], 0.0), axis=1)
            # a_pq read from the same element for both members of a pair, so
            # that both compute the same rotation
            a_row = tl.sum(tl.where(right, a, 0.0), axis=1)  # a[i, partner(i)]
            a_col = tl.sum(tl.where(below, a, 0.0), axis=0)  # a[partner(j), j]
            first = rows < partner
            a_pq = tl.where(first, a_row, a_col)
            a_pp = tl.where(first, diag, diag_partner)
            a_qq = tl.where(first, diag_partner, diag)
            nonzero = a_pq != 0.0
            theta = (a_qq - a_pp) / (2.0 * tl.where(nonzero, a_pq, 1.0))
            t = tl.where(theta >= 0.0, 1.0, -1.0) / (tl.abs(theta) + tl.sqrt(theta * theta + 1.0))
            t = tl.where(nonzero, t, 0.0)
            c = 1.0 / tl.sqrt(t * t + 1.0)
            s = tl.where(first, -t * c, t * c)  # column p holds -s at row q, column q holds s at row p
            rotation = tl.where(eye, c[None, :], tl.where(below, s[None, :], 0.0))
            a = tl.dot(tl.trans(rotation), tl.dot(a, rotation))
            v = tl.dot(v, rotation)
        off2 = tl.sum(tl.sum(tl.where(eye, 0.0, a * a), axis=1), axis=0)
        sweep += 1
    tl.store(w_ptr + pid * N + rows, tl.sum(tl.where(eye, a, 0.0), axis=1))
    tl.store(v_ptr + pid * N * N + offsets, v)
    tl.store(sweeps_ptr + pid, sweep)


@functools.cache
def _kernel():
    if triton is None:
        raise RuntimeError("the Jacobi eigensolver needs Triton (pip install triton)")
    return triton.jit(_jacobi_program)


def _interpreting() -> bool:
    return triton is not None and bool(triton.knobs.runtime.interpret)


@functools.cache
def _schedule(n: int, device: torch.device) -> Tensor:
    return round_robin(n).to(device)


def jacobi_eigh(matrices: Tensor, tol: float = TOLERANCE, max_sweeps: int = MAX_SWEEPS,
                num_warps: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenpairs of a batch of symmetric float64 matrices, one Triton launch.

    Runs compiled on CUDA and in Triton's interpreter on the CPU (slow; for
    tests). Only the lower-or-upper symmetry is assumed, not checked.

    Args:
        matrices: (..., n, n) symmetric, float64.
        tol: stop when the off-diagonal Frobenius norm is below ``tol`` times
            the matrix's.

    Returns:
        eigenvalues (..., n) and eigenvectors (..., n, n) (columns), both in
        no particular order, and the sweeps each matrix took (...,) int32
        (``max_sweeps`` means it stopped unconverged).
    """
    if matrices.dtype != torch.float64:
        raise TypeError(f"jacobi_eigh works in float64, got {matrices.dtype}")
    *batch, n, m = matrices.shape
    if n != m:
        raise ValueError(f"expected square matrices, got shape {tuple(matrices.shape)}")
    size = max(16, 1 << (n - 1).bit_length())  # tl.dot needs power-of-two sides >= 16
    flat = matrices.reshape(-1, n, n)
    count = flat.shape[0]
    if size != n:
        flat = torch.nn.functional.pad(flat, (0, size - n, 0, size - n))
    flat = flat.contiguous()
    values = flat.new_empty(count, size)
    vectors = flat.new_empty(count, size, size)
    sweeps = torch.empty(count, dtype=torch.int32, device=flat.device)
    if flat.device.type == "cpu" and not _interpreting():
        raise RuntimeError("jacobi_eigh runs on the CPU only in Triton's interpreter: set TRITON_INTERPRET=1 "
                           "before importing triton (the CPU path uses LAPACK: symmetric_eigh)")
    if count:
        launch = dict(num_warps=num_warps) if flat.device.type != "cpu" else {}
        _kernel()[(count,)](flat, values, vectors, sweeps, _schedule(size, flat.device), tol * tol,
                         N=size, MAX_SWEEPS=max_sweeps, **launch)
    values, vectors = values[:, :n], vectors[:, :n, :n]
    return values.reshape(*batch, n), vectors.reshape(*batch, n, n), sweeps.reshape(batch)


def jacobi_available(device: torch.device) -> bool:
    """Whether :func:`symmetric_eigh` uses the Jacobi kernel on ``device`` by default."""
    return device.type == "cuda" and triton is not None


def symmetric_eigh(matrices: Tensor, solver: str | None = None) -> tuple[Tensor, Tensor]:
    """Eigenpairs of symmetric float64 matrices, eigenvalues ascending (like ``torch.linalg.eigh``).

    Args:
        matrices: (..., n, n) float64.
        solver: ``'lapack'`` (``torch.linalg.eigh``), ``'jacobi'``
            (:func:`jacobi_eigh`) or ``'auto'``: Jacobi on CUDA when Triton is
            installed, LAPACK otherwise. None reads ``$CASS_EIGENSOLVER``
            (default ``'auto'``).

    Returns:
        eigenvalues (..., n) ascending and eigenvectors (..., n, n) (columns).
    """
    solver = solver or os.environ.get("CASS_EIGENSOLVER", "auto")
    if solver not in SOLVERS:
        raise ValueError(f"eigensolver must be one of {SOLVERS}, got {solver!r} (CASS_EIGENSOLVER)")
    if solver == "lapack" or (solver == "auto" and not jacobi_available(matrices.device)):
        return torch.linalg.eigh(matrices)
    values, vectors, _ = jacobi_eigh(matrices)
    values, order = values.sort(dim=-1, stable=True)
    return values, vectors.gather(-1, order[..., None, :].expand_as(vectors))
