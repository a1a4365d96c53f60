"""A method is one module: a toy method registered from outside the package (tests/toy_method.py) runs
through Segmenter, eval.py and the web app's engine, with no file of ``cass/`` naming it.

Each entry point is checked against something independent of it: Segmenter's probabilities against the
key-key formula written out here with torch, eval.py's saved predictions against Segmenter's labels on
the same files, the engine's result against Segmenter's. And each is checked to differ from CASS's
output on the same input, so that a silent fall-back to the default method fails.
"""
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VFM, load_script, synthetic_photo
from fake_datasets import NAMES, block_label, voc_layout
from PIL import Image

from cass import clip_vit
from cass.api import Segmenter
from cass.methods import METHODS
from cass.benchmarks import CONFIGS_DIR, RESIZE_KEY
from cass.images import normalise

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CLASSES = ["sky, cloud", "cat", "grass"]  # queries: sky, cloud, cat, grass


@pytest.fixture(scope="module")
def toy():
    """The toy method's name, registered by importing its module; unregistered afterwards."""
    sys.modules.pop("toy_method", None)  # a fresh import registers it (an earlier one may have been undone)
    module = importlib.import_module("toy_method")
    assert module.NAME in METHODS and METHODS[module.NAME] is module.METHOD
    yield module.NAME
    METHODS.pop(module.NAME, None)
    sys.modules.pop("toy_method", None)


def weights(weights_dir):
    return dict(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                vfm_overrides=TINY_VFM)


def key_key_probs(model, image: torch.Tensor) -> torch.Tensor:
    """The toy's probabilities for one whole-image window whose size is the output's, written out:
    CLIP's trunk, then in its last block softmax(K K^T / sqrt(d)) V per head (CLS + patches), out_proj,
    no residual, ln_post and proj of the patches, cosine with the text, bilinear upsampling, x40
    softmax over the queries, max over each class's synonyms."""
    visual = model.clip.visual
    block = visual.transformer.resblocks[-1]
    tokens, (h, w) = clip_vit.clip_trunk(visual, image[None])
    heads = block.attn.num_heads
    qkv = F.linear(block.ln_1(tokens), block.attn.in_proj_weight, block.attn.in_proj_bias)[0]
    _, k, v = qkv.reshape(qkv.shape[0], 3, heads, -1).permute(1, 2, 0, 3)  # each (H, T, d)
    attn = (k @ k.transpose(-1, -2) / math.sqrt(k.shape[-1])).softmax(-1)
    x = block.attn.out_proj((attn @ v).transpose(0, 1).flatten(1))  # (T, D)
    feats = F.normalize(visual.ln_post(x[1:]) @ visual.proj, dim=-1)  # (h*w, E)
    text, _ = model.text_state()
    logits = (feats @ text.T).T.reshape(1, -1, h, w)
    logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)[0] * 40
    probs = logits.softmax(0)
    return torch.stack([probs[0:2].amax(0), probs[2], probs[3]])


# ------------------------------------------------------------------ 1. Segmenter
def test_segmenter_runs_the_toy_method(toy, weights_dir):
    # short side 112 for a 112x160 image: no resize, one window, so the output is the formula's grid upsampled
    options = {RESIZE_KEY: (2048, 112)}
    segmenter = Segmenter(classes=CLASSES, method=toy, slide_crop=0, precision="fp32", cfg_options=options,
                          **weights(weights_dir))
    assert segmenter.scale == (2048, 112)
    model = segmenter.model
    assert model.config.method.name == toy and model.vfm is None  # the toy needs no VFM: none was read
    rgb = synthetic_photo(112, 160)
    result = segmenter(rgb)
    assert result.probs.shape == (3, 112, 160) and np.ptp(result.probs[0]) > 1e-3  # not a constant map
    with torch.no_grad():
        want = key_key_probs(model, normalise(np.ascontiguousarray(rgb[..., ::-1])))
    torch.testing.assert_close(torch.from_numpy(result.probs), want)
    np.testing.assert_array_equal(result.labels, want.argmax(0).numpy())
    # not CASS's (the default method) on the same settings
    cass = Segmenter(classes=CLASSES, slide_crop=0, precision="fp32", cfg_options=options, **weights(weights_dir))
    assert cass.model.config.method.name == "cass"
    assert not np.allclose(cass(rgb).probs, result.probs, atol=1e-3)


# ------------------------------------------------------------------ 2. eval.py
def test_eval_runs_the_toy_method(toy, weights_dir, tmp_path):
    """eval.py, unchanged, imports the toy's module itself: ``--cfg-options custom_imports.imports=[toy_method]``
    (the module importable, here through PYTHONPATH), before it looks the method up."""
    labels = [block_label([0, 15, 8, 12]), block_label([0, 7]), block_label([3, 0, 15])]
    data = voc_layout(tmp_path / "VOC2012", labels=labels)
    w = weights(weights_dir)
    tiny = [f"model.vfm_overrides.{key}={value}" for key, value in TINY_VFM.items()]
    args = ["--config", "configs/cfg_voc21.py", "--data-root", data, "--clip-path", w["clip_path"],
            "--vfm-path", w["vfm_path"], "--work-dir", tmp_path / "work", "--save-preds", tmp_path / "preds",
            "--cfg-options", f"model.method={toy}", "custom_imports.imports=[toy_method]", *tiny,
            "model.text_cache_dir=False", "test_dataloader.num_workers=0"]
    env = dict(os.environ, CASS_CACHE_DIR=str(tmp_path / "cache"), CASS_WEIGHTS_DIR=str(tmp_path / "weights-cache"),
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "preds" / "cass_run.json").read_text())
    assert record["model"]["method"] == toy
    report = json.loads((tmp_path / "work" / "metrics.json").read_text())
    assert report["images"] == 3 and f"mIoU {report['mIoU']:.2f}" in result.stdout

    # its predictions are the toy's: Segmenter's labels on the same files with the same config
    toy_segmenter = Segmenter(CONFIGS_DIR / "cfg_voc21.py", method=toy, text_cache_dir=False, **w)
    cass_segmenter = Segmenter(CONFIGS_DIR / "cfg_voc21.py", text_cache_dir=False, **w)
    assert toy_segmenter.model.config.method.name == toy and cass_segmenter.model.config.method.name == "cass"
    differs = []
    for name in NAMES:
        image = data / "JPEGImages" / f"{name}.jpg"
        pred = np.asarray(Image.open(tmp_path / "preds" / f"{name}.png"))
        expected = toy_segmenter(image).labels
        np.testing.assert_array_equal(pred, expected, err_msg=name)
        differs.append(not np.array_equal(cass_segmenter(image).labels, expected))
    assert any(differs), "CASS predicts the same labels: the check cannot tell the methods apart"


# ------------------------------------------------------------------ 3. the web app's engine
def test_the_app_engine_runs_the_toy_method(toy, weights_dir, tmp_path):
    from cass.webapp import Engine, Options, Request

    w = weights(weights_dir)
    engine = Engine(Options(clip_path=w["clip_path"], vfm_path=w["vfm_path"],
                            cfg_options={f"model.vfm_overrides.{k}": v for k, v in TINY_VFM.items()}),
                    tmp_path / "out")
    assert toy in engine.methods and not engine.uses_vfm(toy)
    path = tmp_path / "photo.png"
    Image.fromarray(synthetic_photo(96, 128)).save(path)

    def request(method):
        return Request(path, path.name, "sky, grass, cat", method, "ViT-B/16", "dino_vitb8", "ADE20K", 0.0, False)

    outcome = engine.run(request(toy))
    assert engine.models.built() == [(toy, "ViT-B/16", None)]
    assert outcome.summary.startswith(f"{toy} with ViT-B/16 on cpu")
    assert json.loads(outcome.files[2].read_text())["method"] == toy
    expected = Segmenter(classes=["sky", "grass", "cat"], method=toy, **w)(path)
    np.testing.assert_allclose(outcome.result.probs, expected.probs, atol=1e-6)
    np.testing.assert_array_equal(outcome.result.labels, expected.labels)
    cass = engine.run(request("cass"))
    assert not np.allclose(cass.result.probs, outcome.result.probs, atol=1e-3)


def test_the_app_page_offers_the_toy_method(toy, weights_dir, tmp_path):
    """app.py's method menu lists it (read from the registry when the page is built)."""
    pytest.importorskip("gradio", reason="the app needs gradio: pip install -e .[app]")
    from cass.webapp import Engine, Options

    app = load_script("app.py", "toy_method_app")
    try:
        w = weights(weights_dir)
        engine = Engine(Options(clip_path=w["clip_path"], vfm_path=w["vfm_path"],
                                cfg_options={f"model.vfm_overrides.{k}": v for k, v in TINY_VFM.items()}),
                        tmp_path / "out")
        config = app.build_page(engine).get_config_file()
        menus = {c["props"]["elem_id"]: c["props"] for c in config["components"] if c["props"].get("elem_id")}
        assert toy in [value for _, value in menus["method"]["choices"]]
        vfm_menu = app.method_changed(engine, toy, "ADE20K", None, "", None)[0]
        assert vfm_menu["interactive"] is False  # the toy uses no VFM
    finally:
        sys.modules.pop("toy_method_app", None)
