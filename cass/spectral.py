"""Spectral object-level context distillation (spec sections 1-4).

Pure functions on tensors. Batch dimensions ``...`` are crops; ``H`` heads,
``N`` patch tokens, ``d`` head dimension. Every graph is a key-key graph
``A = K K^T / sqrt(d)`` of rank <= d, which the functions exploit: spectra and
low-rank approximations come from the d x d matrix ``K^T K / sqrt(d)`` in
float64 (exact, deterministic, O(N d^2) instead of O(N^3)).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .config import SpectralConfig
from .eigh import symmetric_eigh

_EPS = 1e-12


def key_graph(keys: Tensor) -> Tensor:
    """Key-key graph ``K K^T / sqrt(d)``: (..., N, d) -> (..., N, N)."""
    return keys @ keys.transpose(-1, -2) / math.sqrt(keys.shape[-1])


@functools.lru_cache(maxsize=8)
def gaussian_bias(grid: tuple[int, int], sigma: float, device: torch.device | None = None) -> Tensor:
    """Gaussian neighbourhood bias ``G[p, q] = exp(-|pos_p - pos_q|^2 / (2 sigma^2))``.

    Positions are (row, col) in patch units, tokens in row-major order.
    Cached per grid, sigma and device (read-only: do not modify the result).

    Returns:
        (N, N) float32, ``N = h * w``.
    """
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                                torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    dist2 = (pos[:, None, :] - pos[None, :, :]).pow(2).sum(-1)
    return torch.exp(-dist2 / (2 * sigma**2))


def range_match(x: Tensor, ref: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Affinely map ``x`` so that its min/max over ``dims`` equal those of ``ref``.

    ``(x - min x) / (max x - min x) * (max ref - min ref) + min ref``. A constant
    ``x`` (zero range) maps to ``min ref`` instead of NaN.
    """
    x_min, x_max = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    r_min, r_max = ref.amin(dim=dims, keepdim=True), ref.amax(dim=dims, keepdim=True)
    scale = (x_max - x_min).clamp_min(torch.finfo(x.dtype).tiny)
    return (x - x_min) / scale * (r_max - r_min) + r_min


def _gram_eigh(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of ``K^T K / sqrt(d)`` in float64, eigenvalues descending.

    LAPACK on the CPU, the batched Jacobi kernel on CUDA (:mod:`cass.eigh`).

    Returns:
        eigenvalues (..., d) and eigenvectors (..., d, d) (columns).
    """
    k = keys.double()
    gram = k.transpose(-1, -2) @ k / math.sqrt(k.shape[-1])
    vals, vecs = symmetric_eigh(gram)
    return vals.flip(-1), vecs.flip(-1)


def head_spectra(keys: Tensor, top: int = 20, eigenvalues: Tensor | None = None) -> Tensor:
    """Top eigenvalues of each head's key graph ``K K^T / sqrt(d)``, descending.

    Equal to ``eigvalsh`` of the N x N graph (the nonzero spectrum of
    ``K K^T`` and ``K^T K`` coincide; the remaining ones are zero).

    Args:
        keys: (..., N, d).
        top: number of eigenvalues; ``min(top, N)`` are returned.
        eigenvalues: (..., d) descending eigenvalues of ``K^T K / sqrt(d)``
            when already computed.

    Returns:
        (..., min(top, N)) float64.
    """
    n, d = keys.shape[-2:]
    count = min(top, n)
    vals = _gram_eigh(keys)[0] if eigenvalues is None else eigenvalues
    if count > d:
        vals = torch.cat([vals, vals.new_zeros(*vals.shape[:-1], count - d)], dim=-1)
    return vals[..., :count]


def spectral_cost(vfm_spectra: Tensor, clip_spectra: Tensor) -> Tensor:
    """Head-matching cost ``C[i, j] = 1 - W1(lambda_VFM^i, lambda_CLIP^j)``.

    Each spectrum is L2-normalised, then L1-normalised; ``W1`` is the sum of
    absolute differences of the sorted values.
    Like the reference, the cost is returned in float32.

    Args:
        vfm_spectra, clip_spectra: (..., H, k) descending spectra.

    Returns:
        (..., H, H) cost, rows VFM (DINO) heads, columns CLIP heads.
    """
    def normalise(lam: Tensor) -> Tensor:
        lam = lam / lam.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        return lam / lam.abs().sum(dim=-1, keepdim=True).clamp_min(_EPS)

    u, v = normalise(vfm_spectra).sort(-1).values, normalise(clip_spectra).sort(-1).values
    dist = (u[..., :, None, :] - v[..., None, :, :]).abs().sum(-1)
    return (1 - dist).float()


def assignment_duals(cost: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Reduced costs ``r = C - u - v`` of an optimal assignment's dual potentials.

    For the optimal assignment ``i -> cols[i]``, the potentials ``v`` are the
    shortest-path distances in the exchange graph on columns (edge
    ``cols[i] -> j`` of weight ``C[i, j] - C[i, cols[i]]``, no negative cycle
    because the assignment is optimal) and ``u_i = C[i, cols[i]] - v[cols[i]]``.
    Then ``r >= 0``, ``r[i, cols[i]] = 0``, and every assignment ``pi`` costs
    exactly ``opt + sum_i r[i, pi(i)]`` (linear-programming duality).

    Returns:
        (n, n) float64 reduced costs (>= 0 up to rounding).
    """
    cost = np.asarray(cost, dtype=np.float64)
    n = cost.shape[0]
    rows = np.arange(n)
    weight = np.empty_like(cost)
    weight[cols] = cost - cost[rows, cols][:, None]
    dist = np.zeros(n)
    for _ in range(n):  # Bellman-Ford from a virtual source joined to every column
        relaxed = np.minimum(dist, (dist[:, None] + weight).min(axis=0))
        if np.array_equal(relaxed, dist):
            break
        dist = relaxed
    u = cost[rows, cols] - dist[cols]
    return cost - u[:, None] - dist[None, :]


def canonical_assignment(cost: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Lexicographically smallest assignment within ``tol`` of the minimum cost.

    The spectral cost is additive over head pairs whose sorted spectra cross at
    the same places, so several assignments often tie; which one scipy returns
    then depends on rounding. This picks a canonical one: row 0 gets the
    smallest column that still allows a total within ``tol`` of the optimum
    (checked with a Hungarian solve of the remaining rows), then row 1, ...

    The reduced costs of one optimal solve (:func:`assignment_duals`) prune
    the search: an assignment costs ``opt + sum of its reduced costs``, all
    ``>= 0``, so a column whose reduced cost (plus those already spent)
    exceeds ``tol`` cannot be in any assignment within ``tol``. Only the
    remaining candidates are checked, and a row with a single candidate takes
    it unchecked. A witness assignment within the budget that extends the
    choices so far (first the optimum, then the completion found by the last
    successful check) is kept, and its column for the current row fits by
    construction: only candidates before it need a check. Without ties this
    is one Hungarian solve in all; the result is the same as checking every
    column (:func:`canonical_assignment_exhaustive`).

    The rule is defined on exact sums, so they are taken in float64 whatever
    the cost's dtype: float32 sums of twelve costs near 1 round by more than
    ``tol`` and can leave no feasible column.

    Args:
        cost: (n, n) cost matrix.

    Returns:
        (n,) column index for each row.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n = cost.shape[0]
    rows, cols = linear_sum_assignment(cost)
    budget = cost[rows, cols].sum() + tol
    reduced = assignment_duals(cost, cols)
    slack = tol + 1e-9  # well above the rounding of the reduced costs, far below any real gap
    if ((reduced <= slack).sum(axis=1) == 1).all():  # no tie within tol: the optimum is the answer
        return cols.astype(np.int64)
    witness = cols.astype(np.int64)  # an assignment within the budget that extends the choices so far
    free = np.ones(n, dtype=bool)
    chosen = np.empty(n, dtype=np.int64)
    spent, spent_reduced = 0.0, 0.0
    for i in range(n):
        # columns before the witness's that the reduced costs allow, in order; the first
        # one that still admits a completion within the budget wins, else the witness's
        candidates = np.flatnonzero(free & (spent_reduced + reduced[i] <= slack))
        choice = witness[i]
        for j in candidates[candidates < witness[i]]:
            free[j] = False
            sub = cost[i + 1:][:, free]
            r, c = linear_sum_assignment(sub)
            free[j] = True
            if spent + cost[i, j] + sub[r, c].sum() <= budget:
                choice = j
                witness[i + 1:][r] = _free_columns(free, j)[c]
                break
        chosen[i] = choice
        free[choice] = False
        spent += cost[i, choice]
        spent_reduced += reduced[i, choice]
    return chosen


def _free_columns(free: np.ndarray, taken: int) -> np.ndarray:
    """Indices of the free columns other than ``taken``, ascending."""
    mask = free.copy()
    mask[taken] = False
    return np.flatnonzero(mask)


def canonical_assignment_exhaustive(cost: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """:func:`canonical_assignment` without pruning: every free column is checked.

    The definition, kept as the reference for tests; O(n^2) Hungarian solves.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n = cost.shape[0]
    rows, cols = linear_sum_assignment(cost)
    budget = cost[rows, cols].sum() + tol
    free = list(range(n))
    chosen = np.empty(n, dtype=np.int64)
    spent = 0.0
    for i in range(n):
        for j in free:
            rest = [c for c in free if c != j]
            sub = cost[np.ix_(range(i + 1, n), rest)]
            r, c = linear_sum_assignment(sub)
            if spent + cost[i, j] + sub[r, c].sum() <= budget:
                chosen[i] = j
                spent += cost[i, j]
                free = rest
                break
        else:
            raise RuntimeError("canonical_assignment found no feasible column")
    return chosen


class HostCopy:
    """A device tensor's copy to the host, started now and waited for on :meth:`numpy`.

    On CUDA the copy goes to pinned memory without blocking, so the GPU goes on
    with work queued after it while the host waits only for the copy.
    """

    def __init__(self, tensor: Tensor) -> None:
        tensor = tensor.detach()
        self._event = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.cpu()

    def numpy(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


def match_heads(cost: Tensor | HostCopy, canonical: bool = True, tol: float = 1e-5,
                device: torch.device | None = None) -> Tensor:
    """Hungarian head matching for every crop, with one device-to-host copy.

    Minimises the total cost ``1 - W1``, i.e. pairs heads whose spectra are
    the *most different* (complementary).

    Args:
        cost: (B, H, H) cost matrices, or their :class:`HostCopy` under way.
        canonical: use :func:`canonical_assignment`; False mimics the
            released code (plain ``linear_sum_assignment``).
        device: where the result goes (default: ``cost.device``).

    Returns:
        (B, H) int64 column index for each row.
    """
    if isinstance(cost, Tensor):
        device = cost.device if device is None else device
        cost = HostCopy(cost)
    device = torch.device("cpu") if device is None else torch.device(device)
    costs = cost.numpy()
    if canonical:
        cols = [canonical_assignment(c, tol) for c in costs]
    else:
        cols = [linear_sum_assignment(c)[1] for c in costs]
    cols = torch.as_tensor(np.stack(cols), dtype=torch.long)
    if device.type == "cuda":  # a copy from pageable memory would first wait for all queued GPU work
        cols = cols.pin_memory()
    return cols.to(device, non_blocking=True)


def pairing(cost: Tensor, cols: Tensor, swapped: bool = True) -> tuple[Tensor, Tensor]:
    """DINO head and weight for each fused head (fused head ``s`` uses CLIP head ``s``).

    Rows of ``cost`` are DINO heads, columns CLIP heads, ``cols[i]`` the column
    matched to row ``i``.

    * ``swapped=True`` (reference quirk): fused head ``i`` takes CLIP head ``i``
      and DINO head ``cols[i]``, weight ``1 - C[i, cols[i]]``.
    * ``swapped=False`` (consistent): CLIP head ``cols[i]`` is paired with DINO
      head ``i``, weight ``1 - C[i, cols[i]]``.

    Args:
        cost: (B, H, H); cols: (B, H).

    Returns:
        dino_index (B, H) and weight (B, H), indexed by fused (= CLIP) head.
    """
    rows = torch.arange(cols.shape[-1], device=cols.device).expand_as(cols)
    weight = 1 - cost.gather(-1, cols[..., None])[..., 0]
    if swapped:
        return cols, weight
    dino_index = torch.empty_like(cols).scatter_(-1, cols, rows)
    return dino_index, torch.empty_like(weight).scatter_(-1, cols, weight)


def eigenscale(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Dynamic eigenscaling ``phi`` over the kept eigenvalues (last axis).

    ``s' = (s - s_min) / (s_max - s_min) * (1.5 s_max - 0.5 s_min) + 0.5 s_min``,
    min and max over the entries where ``mask`` is True (all when None). A
    zero range leaves the values unchanged.
    """
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    s_min = values.masked_fill(~mask, math.inf).amin(-1, keepdim=True)
    s_max = values.masked_fill(~mask, -math.inf).amax(-1, keepdim=True)
    span = s_max - s_min
    scaled = (values - s_min) / span.clamp_min(_EPS) * (1.5 * s_max - 0.5 * s_min) + 0.5 * s_min
    return torch.where(span > 0, scaled, values)


def energy_rank(eigenvalues: Tensor, threshold: float = 0.95) -> Tensor:
    """Smallest r whose cumulative share of the full spectrum reaches ``threshold``.

    Args:
        eigenvalues: (..., d) descending, the whole (nonzero) spectrum.

    Returns:
        (...,) int64 ranks in [1, d].
    """
    vals = eigenvalues.clamp_min(0)
    share = vals.cumsum(-1) / vals.sum(-1, keepdim=True).clamp_min(_EPS)
    rank = (share < threshold - 1e-12).sum(-1) + 1
    return rank.clamp(max=eigenvalues.shape[-1])


def low_rank_graph(keys: Tensor, rank: int | None = 10, scale_eigenvalues: bool = True,
                   energy_threshold: float = 0.95, out_dtype: torch.dtype = torch.float32,
                   eigenpairs: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Rank-r approximation ``U_r diag(phi(s_r)) U_r^T`` of the graph ``K K^T / sqrt(d)``.

    The graph is symmetric PSD, so its SVD is its eigendecomposition. With
    ``K^T K / sqrt(d) = W diag(s) W^T`` the graph's eigenvectors are
    ``u_i = K w_i / sqrt(sqrt(d) s_i)``, hence the approximation equals
    ``K B K^T`` with ``B = W_r diag(phi(s_r) / (sqrt(d) s_r)) W_r^T`` (d x d,
    float64): exact, without an N x N decomposition.

    Args:
        keys: (..., N, d).
        rank: number of eigenpairs (reference: 10 in effect); None uses the
            paper's energy rule with ``energy_threshold`` per graph.
        scale_eigenvalues: apply the dynamic eigenscaling ``phi``.
        eigenpairs: ``_gram_eigh(keys)`` when already computed.

    Returns:
        (..., N, N) approximation in ``out_dtype``.
    """
    n, d = keys.shape[-2:]
    vals, vecs = _gram_eigh(keys) if eigenpairs is None else eigenpairs
    positions = torch.arange(d, device=keys.device)
    if rank is None:
        kept = positions < energy_rank(vals, energy_threshold)[..., None]
    else:
        kept = (positions < min(rank, n, d)).expand_as(vals)
    scaled = eigenscale(vals, kept) if scale_eigenvalues else vals
    # zero eigenvalues have no direction; their scaled value is zero too (phi(0) = 0 when s_min = 0)
    positive = kept & (vals > vals[..., :1].abs() * 1e-12)
    coeff = torch.where(positive, scaled / (math.sqrt(d) * vals.clamp_min(_EPS)), torch.zeros_like(vals))
    inner = (vecs * coeff[..., None, :]) @ vecs.transpose(-1, -2)  # (..., d, d)
    k = keys.to(out_dtype)
    return k @ inner.to(out_dtype) @ k.transpose(-1, -2)


def zero_diagonal(graph: Tensor) -> Tensor:
    """Copy of (..., N, N) ``graph`` with a zero diagonal."""
    return graph - torch.diag_embed(torch.diagonal(graph, dim1=-2, dim2=-1))


def fuse_spectral(clip_keys: Tensor, vfm_keys: Tensor, cfg: SpectralConfig) -> Tensor:
    """Fused attention logits of the "spectral" strategy (spec sections 3-4).

    All Gram matrices (DINO and CLIP heads of every crop) are decomposed in
    one batch. The matching is the one step on the host: its cost matrices
    are copied without blocking, and the DINO low-rank graphs (which do not
    depend on the matching) are queued before the host waits for them.

    Args:
        clip_keys: (B, H, N, d) CLIP patch keys.
        vfm_keys: (B, H, N, d) DINO keys on the CLIP grid, range-matched.
        cfg: ``top_eigen``, ``low_rank``, ``energy_threshold``,
            ``eigenscaling``, ``canonical_matching``, ``swapped_pairing`` and
            ``vfm_weight`` are used.

    Returns:
        (B, H, N, N) float32 ``(10 w A~ + A_CLIP) / (10 w + 1)``, before G.
    """
    clip_graph = key_graph(clip_keys.float())
    # one decomposition per DINO head serves both its spectrum and its low-rank graph
    vals, vecs = _gram_eigh(torch.cat([vfm_keys, clip_keys]))
    dino_vals, dino_vecs = vals[:len(vfm_keys)], vecs[:len(vfm_keys)]
    cost = spectral_cost(head_spectra(vfm_keys, cfg.top_eigen, dino_vals),
                         head_spectra(clip_keys, cfg.top_eigen, vals[len(vfm_keys):]))
    host_cost = HostCopy(cost)
    dino_graphs = zero_diagonal(low_rank_graph(vfm_keys, cfg.low_rank, cfg.eigenscaling, cfg.energy_threshold,
                                               eigenpairs=(dino_vals, dino_vecs)))
    cols = match_heads(host_cost, canonical=cfg.canonical_matching, device=cost.device)
    dino_index, weight = pairing(cost, cols, swapped=cfg.swapped_pairing)
    approx = dino_graphs.gather(1, dino_index[..., None, None].expand_as(dino_graphs))
    approx = range_match(approx, clip_graph, dims=(-2, -1))
    w = (cfg.vfm_weight * weight)[..., None, None]
    return (w * approx + clip_graph) / (w + 1)


def fuse_sequential(clip_keys: Tensor, vfm_keys: Tensor, cfg: SpectralConfig) -> Tensor:
    """Fused attention logits of the "sequential" strategy: head i with head i.

    No matching, no eigenscaling: ``(A~ + A_CLIP) / 2`` (``cfg.low_rank`` and
    ``cfg.energy_threshold`` are used).

    Returns:
        (B, H, N, N) float32, before G.
    """
    clip_graph = key_graph(clip_keys.float())
    approx = zero_diagonal(low_rank_graph(vfm_keys, cfg.low_rank, scale_eigenvalues=False,
                                          energy_threshold=cfg.energy_threshold))
    return (range_match(approx, clip_graph, dims=(-2, -1)) + clip_graph) / 2
