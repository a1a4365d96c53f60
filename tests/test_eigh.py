"""The batched Jacobi eigensolver (Triton, run by the interpreter here) against LAPACK.

Budget (issue 10): eigenvalues within 1e-9 of float64 LAPACK relative to the
spectrum's scale, the projector onto the kept eigenvectors within 1e-8, on
random, rank-deficient, repeated-eigenvalue and constant-image inputs; the same
input gives the same bits twice.
"""
from __future__ import annotations

import math

import pytest
import torch

from cass import eigh, spectral
from cass.config import SpectralConfig

triton = pytest.importorskip("triton")


def gram(keys: torch.Tensor) -> torch.Tensor:
    keys = keys.double()
    return keys.transpose(-1, -2) @ keys / math.sqrt(keys.shape[-1])


def with_spectrum(values: list[float], seed: int) -> torch.Tensor:
    """Symmetric matrix with the given eigenvalues and a random eigenbasis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ q.T


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    constant = torch.randn(1, 64, generator=g).expand(196, 64)  # every patch the same key
    rank_deficient = torch.randn(12, 64, generator=g)  # 12 tokens: rank 12 of 64
    repeated = [5.0] * 6 + [3.0] * 4 + [1.0] * 20 + [0.0] * 34  # ties inside the kept and the dropped sets
    return {
        "random": gram(torch.randn(2, 196, 64, generator=g)),
        "rank_deficient": gram(rank_deficient)[None],
        "repeated": with_spectrum(repeated, 1)[None],
        "constant": gram(constant)[None],
        "padded_40": gram(torch.randn(1, 100, 40, generator=g)),  # padded to 64 inside the kernel
        "zero": torch.zeros(1, 64, 64, dtype=torch.float64),
    }


@pytest.fixture(scope="module")
def solved():
    return {name: (m, eigh.jacobi_eigh(m)) for name, m in inputs().items()}


def projector(vectors: torch.Tensor, values: torch.Tensor, count: int) -> torch.Tensor:
    order = values.argsort(dim=-1, descending=True)[..., :count]
    kept = vectors.gather(-1, order[..., None, :].expand(*vectors.shape[:-1], count))
    return kept @ kept.transpose(-1, -2)


@pytest.mark.parametrize("name", list(inputs()))
def test_jacobi_matches_lapack(solved, name):
    matrix, (values, vectors, sweeps) = solved[name]
    ref_values, ref_vectors = torch.linalg.eigh(matrix)
    scale = ref_values.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    assert ((values.sort(-1).values - ref_values).abs() / scale).max() <= 1e-9
    assert (sweeps < eigh.MAX_SWEEPS).all()
    # orthonormal eigenvectors that diagonalise the matrix
    eye = torch.eye(matrix.shape[-1], dtype=torch.float64)
    assert (vectors.transpose(-1, -2) @ vectors - eye).abs().max() <= 1e-12
    residual = matrix @ vectors - vectors * values[..., None, :]
    assert residual.abs().max() <= 1e-10 * scale.max()
    # the kept subspaces (top 10 of the low-rank graph, top 20 of the spectra) where they are
    # defined, i.e. where the spectrum has a gap at the cut
    for count in (10, 20):
        gap = ref_values.flip(-1)[..., count - 1] - ref_values.flip(-1)[..., count]
        defined = gap > 1e-6 * scale[..., 0]
        diff = (projector(vectors, values, count) - projector(ref_vectors, ref_values, count)).abs().amax((-2, -1))
        assert (diff[defined] <= 1e-8).all(), f"{name}: top-{count} projector off by {diff.max():.2e}"


def test_jacobi_is_deterministic(solved):
    matrix, (values, vectors, _) = solved["random"]
    again_values, again_vectors, _ = eigh.jacobi_eigh(matrix)
    assert torch.equal(values, again_values) and torch.equal(vectors, again_vectors)


def test_round_robin_meets_every_pair_once():
    for n in (2, 8, 64):
        table = eigh.round_robin(n)
        seen = set()
        for row in table.tolist():
            assert sorted(row) == list(range(n))
            for i, j in enumerate(row):
                assert j != i and row[j] == i  # an involution without fixed points
                seen.add((min(i, j), max(i, j)))
        assert len(seen) == n * (n - 1) // 2


def test_symmetric_eigh_orders_like_lapack(solved):
    matrix = solved["repeated"][0]
    values, vectors = eigh.symmetric_eigh(matrix, solver="jacobi")
    ref_values, _ = eigh.symmetric_eigh(matrix, solver="lapack")
    assert torch.all(values[..., 1:] >= values[..., :-1])
    assert torch.allclose(values, ref_values, rtol=0, atol=1e-12)
    assert torch.allclose(vectors @ torch.diag_embed(values) @ vectors.transpose(-1, -2), matrix, atol=1e-12)
    with pytest.raises(ValueError, match="eigensolver must be one of"):
        eigh.symmetric_eigh(matrix, solver="qr")


def test_jacobi_refuses_other_dtypes():
    with pytest.raises(TypeError, match="float64"):
        eigh.jacobi_eigh(torch.eye(16))


def test_fusion_with_jacobi_equals_lapack(monkeypatch):
    """The whole spectral step with the Jacobi solver: same matching, same fused logits."""
    g = torch.Generator().manual_seed(3)
    clip_keys = torch.randn(1, 2, 49, 64, generator=g)
    vfm_keys = torch.randn(1, 2, 49, 64, generator=g) * torch.linspace(0.2, 2, 64)
    cfg = SpectralConfig()
    monkeypatch.setenv("CASS_EIGENSOLVER", "lapack")
    lapack = spectral.fuse_spectral(clip_keys, vfm_keys, cfg)
    monkeypatch.setenv("CASS_EIGENSOLVER", "jacobi")
    jacobi = spectral.fuse_spectral(clip_keys, vfm_keys, cfg)
    assert (jacobi - lapack).abs().max() <= 1e-5 * lapack.abs().max()


def test_segmentor_with_jacobi_agrees_with_straightforward_path(weights_dir, class_file, monkeypatch):
    """The CUDA code path on the CPU (Jacobi kernel, pruned matching, device-side DINO input)
    against the released-structure loop (N x N eigh per head, exhaustive matching, PIL)."""
    from conftest import model_keys

    from cass import build_model
    from cass.bench import reference_loop

    monkeypatch.setenv("CASS_EIGENSOLVER", "jacobi")
    model = build_model(**model_keys(weights_dir, class_file))
    image = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fast = model.query_logits([image])[0]
        slow = reference_loop.query_logits(model, image, exact_low_rank=True)
    torch.testing.assert_close(slow, fast, atol=2e-4, rtol=1e-4)
