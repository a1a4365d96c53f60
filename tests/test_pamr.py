"""PAMR against a direct per-pixel formula; class chunks and the out-of-memory fallback."""
import logging

import numpy as np
import pytest
import torch

from cass import pamr as pamr_module
from cass.pamr import pamr, pamr_within_memory


def direct_pamr(image, logits, steps, dilations):
    """Per-pixel loops: replicate padding, unbiased std over the 3x3 neighbourhoods
    of all dilations (centre included), softmax over the 8 neighbours per dilation."""
    x, mask = image[0].double().numpy(), logits[0].double().numpy()
    c, h, w = x.shape
    offsets = [(d * dy, d * dx) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    at = lambda a, y, x_, dy, dx: a[:, min(max(y + dy, 0), h - 1), min(max(x_ + dx, 0), w - 1)]
    affinity = np.zeros((h, w, len(offsets)))
    for y in range(h):
        for x_ in range(w):
            std = np.stack([at(x, y, x_, dy, dx) for dy, dx in offsets]).std(axis=0, ddof=1)
            scores = np.array([(-np.abs(x[:, y, x_] - at(x, y, x_, dy, dx)) / (1e-8 + 0.1 * std)).mean()
                               for dy, dx in offsets])
            keep = np.array([(dy, dx) != (0, 0) for dy, dx in offsets])
            e = np.exp(scores[keep] - scores[keep].max())
            affinity[y, x_, keep] = e / e.sum()
    for _ in range(steps):
        new = np.zeros_like(mask)
        for y in range(h):
            for x_ in range(w):
                new[:, y, x_] = sum(affinity[y, x_, k] * at(mask, y, x_, dy, dx)
                                    for k, (dy, dx) in enumerate(offsets) if (dy, dx) != (0, 0))
        mask = new
    return torch.from_numpy(mask)[None]


def test_pamr_equals_direct_formula():
    g = torch.Generator().manual_seed(0)
    image, logits = torch.rand(1, 3, 7, 9, generator=g) * 255, torch.randn(1, 4, 7, 9, generator=g)
    fast = pamr(image, logits, steps=2, dilations=(1, 2))
    torch.testing.assert_close(fast.double(), direct_pamr(image, logits, 2, (1, 2)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast, logits)


def test_class_chunks_give_the_same_values():
    g = torch.Generator().manual_seed(1)
    image, logits = torch.rand(1, 3, 20, 24, generator=g), torch.randn(1, 7, 20, 24, generator=g)
    whole = pamr(image, logits, steps=3, dilations=(2, 4))
    for chunk in (1, 3, 7):
        assert torch.equal(pamr(image, logits, steps=3, dilations=(2, 4), class_chunk=chunk), whole)


def test_out_of_memory_retries_with_fewer_classes_then_skips(monkeypatch):
    g = torch.Generator().manual_seed(2)
    image, logits = torch.rand(1, 3, 16, 16, generator=g), torch.randn(1, 8, 16, 16, generator=g)
    whole = pamr(image, logits, steps=2, dilations=(1, 2))
    real, chunks = pamr_module.pamr, []

    def limited(image, logits, steps, dilations, class_chunk=None):
        chunks.append(class_chunk)
        if class_chunk > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(image, logits, steps, dilations, class_chunk)

    monkeypatch.setattr(pamr_module, "pamr", limited)
    assert torch.equal(pamr_within_memory(image, logits, 2, (1, 2)), whole)
    assert chunks == [8, 2]
    monkeypatch.setattr(pamr_module, "pamr", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")))
    assert pamr_within_memory(image, logits, 2, (1, 2)) is None
    monkeypatch.setattr(pamr_module, "pamr", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a real bug")))
    with pytest.raises(RuntimeError, match="a real bug"):
        pamr_within_memory(image, logits, 2, (1, 2))


def test_model_skips_pamr_with_a_warning_when_nothing_fits(weights_dir, class_file, monkeypatch, caplog):
    from conftest import model_keys

    from cass import build_model
    from cass import model as model_module
    with_pamr = build_model(**model_keys(weights_dir, class_file, pamr_steps=2))
    without = build_model(**model_keys(weights_dir, class_file))
    image = torch.randn(3, 224, 224)
    monkeypatch.setattr(model_module, "pamr_within_memory", lambda *args: None)
    with caplog.at_level(logging.WARNING, logger="cass.model"):
        skipped = with_pamr([image], [(100, 120)])[0]
    assert "PAMR skipped for a 100x120 output: out of memory" in caplog.text
    assert torch.equal(skipped.probs, without([image], [(100, 120)])[0].probs)
