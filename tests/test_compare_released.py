"""scripts/compare_released.py's own helpers, without the released code."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script

from cass.api import load_config, resize_scale
from cass.images import as_bgr_uint8, normalise, resize_keep_ratio

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    yield load_script("scripts/compare_released.py", "compare_released")
    sys.modules.pop("compare_released", None)


def fake_checkout(root):
    root.mkdir()
    (root / "cass_segmentor.py").write_text(
        "def __init__(self, clip_path, name_path, device=torch.device('cuda'), x=1):\n"
        "    query = clip.tokenize(words).to('cuda')\n")
    (root / ".git").mkdir()
    (root / "configs").mkdir()
    (root / "configs" / "cfg_voc21.py").write_text("model = dict()\n")
    return root


def test_patched_copy_runs_on_cpu(compare, tmp_path):
    copy = tmp_path / "copy"
    compare.patch_released_copy(fake_checkout(tmp_path / "released"), copy)
    text = (copy / "cass_segmentor.py").read_text()
    assert "cuda" not in text and "device=torch.device('cpu')" in text and ".to('cpu')" in text
    assert (copy / "configs" / "cfg_voc21.py").is_file() and not (copy / ".git").exists()


def test_unknown_checkouts_are_refused(compare, tmp_path):
    with pytest.raises(compare.ReleasedCodeError, match="not a checkout"):
        compare.patch_released_copy(tmp_path, tmp_path / "copy")
    other = fake_checkout(tmp_path / "other")
    (other / "cass_segmentor.py").write_text("device = 'cpu'\n")
    with pytest.raises(compare.ReleasedCodeError, match="not supported"):
        compare.patch_released_copy(other, tmp_path / "copy2")


def test_inputs_follow_each_config(compare):
    inputs = compare.model_inputs("cityscapes_crop_prior", ["chelsea"])
    image = compare.photo("chelsea")
    assert image.shape == (300, 451, 3)
    scale = resize_scale(load_config(REPO / "configs" / "cfg_city_scapes.py"))
    expected = normalise(resize_keep_ratio(as_bgr_uint8(image), scale)).numpy()
    assert inputs["chelsea"].shape == (3, 560, 842)
    np.testing.assert_array_equal(inputs["chelsea"], expected)
    assert set(compare.FAMILIES) == {"ade20k_slide", "voc21_whole", "cityscapes_crop_prior", "voc20"}


def test_agreement_and_table(compare):
    probs = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    labels = probs.argmax(0)
    other_labels = labels.copy()
    other_labels[0, :2] = (labels[0, :2] + 1) % 3
    result = compare.agreement(dict(probs=probs, labels=labels), dict(probs=probs + 0.25, labels=other_labels))
    assert result["label_agreement"] == pytest.approx(18 / 20) and result["max_prob_diff"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="shape"):
        compare.agreement(dict(probs=probs, labels=labels), dict(probs=probs[:2], labels=labels))
    table = compare.format_table([dict(family="voc20", photo="coffee", variant="canonical", **result)])
    assert "| voc20 | coffee | canonical | 90.00% | 2.5e-01 |" in table


def test_released_runner_exact_svd_is_the_top_eigenpairs(compare):
    """The runner's replacement of torch.svd_lowrank, run as the subprocess defines it."""
    code = compare.RELEASED_RUNNER.split("sys.path.insert")[0].replace("spec = json.loads(sys.argv[1])",
                                                                       "spec = dict(exact_svd=True)")
    scope, original = {}, torch.svd_lowrank
    try:
        exec(code, scope)  # noqa: S102 - the script's own source
        exact = torch.svd_lowrank
    finally:
        torch.svd_lowrank = original  # the runner replaces it process-wide
    assert exact is not original
    g = torch.Generator().manual_seed(0)
    k = torch.randn(30, 8, generator=g, dtype=torch.float64)
    graph = k @ k.T
    u, s, v = exact(graph, q=5)
    vals, vecs = torch.linalg.eigh(graph)
    torch.testing.assert_close(s, vals.flip(0)[:5])
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, vecs[:, -5:] @ torch.diag(vals[-5:]) @ vecs[:, -5:].T)
