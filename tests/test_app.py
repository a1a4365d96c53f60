"""The web app without a browser: cass.webapp's requests, model cache and queue, and app.py's page and flags.

Every request is compared with a Segmenter called directly on the same
settings: the app must be a thin layer, not a second pipeline.
"""
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_VFM, load_script, one_line_error, synthetic_photo
from PIL import Image

from cass.api import Segmenter
from cass.config_files import load_config, resize_scale
from cass.benchmarks import CONFIGS_DIR
from cass.methods import METHODS
from cass.text import VocabularyError
from cass.visualize import LegendEntry, render
from cass.webapp import (PAMR_STEPS, Engine, ModelCache, ModelSlot, Options, Request, catalogue, class_heatmap,
                         legend_html, load_presets, parse_classes, user_message)
from cass.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]
TINY_OPTIONS = {f"model.vfm_overrides.{k}": v for k, v in TINY_VFM.items()}


def photo(h=96, w=128):
    return synthetic_photo(h, w)


@pytest.fixture()
def photo_file(tmp_path):
    path = tmp_path / "my photo.png"
    Image.fromarray(photo()).save(path)
    return path


@pytest.fixture()
def engine(weights_dir, tmp_path):
    options = Options(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                      cfg_options=dict(TINY_OPTIONS))
    return Engine(options, tmp_path / "out")


def request(image, classes="sky, grass, cat", method="cass", preset="ADE20K", prob_thd=0.0, pamr=False,
            clip="ViT-B/16", vfm="dino_vitb8", masks="none"):
    return Request(Path(image), Path(image).name, classes, method, clip, vfm, preset, prob_thd, pamr, masks)


def direct(weights_dir, classes, method="cass", scale_config=None, **overrides):
    """The Segmenter the app should be equivalent to."""
    segmenter = Segmenter(classes=classes, clip_path=str(weights_dir / "tiny_clip.pt"),
                          vfm_path=str(weights_dir / "tiny_dino.pth"), method=method, vfm_overrides=TINY_VFM,
                          **overrides)
    if scale_config is not None:
        segmenter.scale = resize_scale(load_config(scale_config))
    return segmenter


# ------------------------------------------------------------------ inputs
@pytest.mark.parametrize("text, classes", [
    ("cat, dog, sky", ["cat", "dog", "sky"]),
    ("  cat ,dog  ", ["cat", "dog"]),
    ("sky, heaven\ndog, puppy\n\ncat\n", ["sky, heaven", "dog, puppy", "cat"]),
    ("", []),
])
def test_parse_classes(text, classes):
    assert parse_classes(text) == classes


def test_presets_are_the_benchmarks_window_settings():
    presets = load_presets()
    assert list(presets) == ["VOC21", "PC60", "COCO-Obj", "VOC20", "PC59", "COCO-Stuff", "Cityscapes", "ADE20K"]
    voc, ade, city = presets["VOC21"], presets["ADE20K"], presets["Cityscapes"]
    assert (voc.slide_crop, voc.prob_thd) == (0, 0.1) and "whole image" in voc.label
    assert (ade.slide_crop, ade.slide_stride, ade.scale) == (224, 112, (2048, 336))
    assert city.scale == (2048, 560)
    assert ade.classes_text().splitlines() == (CONFIGS_DIR / "cls_ade20k.txt").read_text().strip().splitlines()
    assert len(parse_classes(ade.classes_text())) == 150


def test_catalogue_offers_flags_cached_files_and_the_default_download(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ViT-L-14.pt").write_bytes(b"weights")
    clips, vfms = catalogue("ViT-B/16", "dino_vitb8", clip_path=None, vfm_path="/w/dino.pth", cache_dir=cache)
    assert clips["ViT-B/16"].available and clips["ViT-B/16"].path is None  # the public release, downloaded once
    assert clips["ViT-L/14"].path == str(cache / "ViT-L-14.pt")
    assert clips["ViT-L/14@336px"].missing == f"put ViT-L-14-336px.pt in {cache}"
    assert vfms["dino_vitb8"].path == "/w/dino.pth"
    assert vfms["dinov2_vitb14"].missing == f"put dinov2_vitb14_pretrain.pth in {cache}"
    gated = vfms["dinov3_vitb16"].missing
    assert gated.startswith("request it at https://") and "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth" in gated


# ------------------------------------------------------------------ one request = one Segmenter call
def test_request_equals_the_segmenter_and_writes_its_files(engine, weights_dir, photo_file):
    outcome = engine.run(request(photo_file))
    expected = direct(weights_dir, ["sky", "grass", "cat"])(photo_file)
    np.testing.assert_allclose(outcome.result.probs, expected.probs, atol=1e-6)
    np.testing.assert_array_equal(outcome.result.labels, expected.labels)
    present = sorted(np.unique(expected.labels).tolist())
    assert len(present) > 1, "the checks below need several classes present"

    picture, legend = render(expected.image, expected.labels, expected.class_names)
    np.testing.assert_array_equal(np.asarray(outcome.picture), np.asarray(picture))
    assert outcome.legend == legend
    assert outcome.summary.startswith("cass with ViT-B/16 + dino_vitb8 on cpu: 128x96, 3 classes, ADE20K windows; ")

    labels_png, probs_npy, legend_json = outcome.files
    assert [f.name for f in outcome.files] == ["my_photo_labels.png", "my_photo_probs.npy", "my_photo_legend.json"]
    np.testing.assert_array_equal(np.asarray(Image.open(labels_png)), expected.labels)
    np.testing.assert_array_equal(np.load(probs_npy), outcome.result.probs)
    sidecar = json.loads(legend_json.read_text())
    assert sidecar["image"] == "my photo.png" and sidecar["classes"] == ["sky", "grass", "cat"]
    assert (sidecar["method"], sidecar["clip"], sidecar["vfm"], sidecar["preset"]) == (
        "cass", "ViT-B/16", "dino_vitb8", "ADE20K")
    assert {e["name"]: e["share"] for e in sidecar["legend"]} == {
        name: pytest.approx(share, abs=1e-3) for name, share in expected.shares().items()}


def test_preset_threshold_and_pamr_reach_the_shared_model(engine, weights_dir, photo_file):
    """Settings are per request: a request with other settings leaves none behind on the shared model."""
    voc = engine.run(request(photo_file, preset="VOC21", prob_thd=0.4, pamr=True))
    expected = direct(weights_dir, ["sky", "grass", "cat"], scale_config=CONFIGS_DIR / "cfg_voc21.py",
                      slide_crop=0, prob_thd=0.4, pamr_steps=PAMR_STEPS)(photo_file)
    np.testing.assert_allclose(voc.result.probs, expected.probs, atol=1e-6)
    np.testing.assert_array_equal(voc.result.labels, expected.labels)
    assert "VOC21 windows, PAMR" in voc.summary

    city = engine.run(request(photo_file, preset="Cityscapes"))  # short side 560 instead of 336
    expected = direct(weights_dir, ["sky", "grass", "cat"], scale_config=CONFIGS_DIR / "cfg_city_scapes.py")(photo_file)
    np.testing.assert_allclose(city.result.probs, expected.probs, atol=1e-6)

    again = engine.run(request(photo_file, classes="grass\nsky, heaven\ncat, kitten"))
    expected = direct(weights_dir, ["grass", "sky, heaven", "cat, kitten"])(photo_file)
    np.testing.assert_allclose(again.result.probs, expected.probs, atol=1e-6)
    np.testing.assert_array_equal(again.result.labels, expected.labels)
    assert engine.models.built() == [("cass", "ViT-B/16", "dino_vitb8")]


def test_models_are_built_once_per_method_and_backbone(engine, photo_file, monkeypatch):
    builds = []
    build = engine.build
    monkeypatch.setattr(engine, "build", lambda key, classes: builds.append(key) or build(key, classes))
    engine.run(request(photo_file))
    engine.run(request(photo_file, classes="cat, dog"))
    assert builds == [("cass", "ViT-B/16", "dino_vitb8")]
    # a CLIP-only method ignores the VFM, even one without weights here
    sclip = engine.run(request(photo_file, method="sclip", vfm="dinov2_vitl14"))
    assert builds[-1] == ("sclip", "ViT-B/16", None)
    assert sclip.summary.startswith("sclip with ViT-B/16 on cpu")
    engine.run(request(photo_file, method="sclip"))
    assert len(builds) == 2
    assert engine.models.built() == [("cass", "ViT-B/16", "dino_vitb8"), ("sclip", "ViT-B/16", None)]


def test_least_recently_used_models_are_dropped(weights_dir, tmp_path, photo_file, monkeypatch):
    options = Options(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                      cfg_options=dict(TINY_OPTIONS), max_models=2)
    engine = Engine(options, tmp_path / "out")
    builds, build = [], engine.build
    monkeypatch.setattr(engine, "build", lambda key, classes: builds.append(key) or build(key, classes))
    cass, clip, sclip = ("cass", "ViT-B/16", "dino_vitb8"), ("clip", "ViT-B/16", None), ("sclip", "ViT-B/16", None)
    first = engine.run(request(photo_file))
    engine.run(request(photo_file, method="clip"))
    assert engine.models.built() == [cass, clip]  # least recently used first
    engine.run(request(photo_file, method="sclip"))  # a third model: cass, the least recently used, goes
    assert engine.models.built() == [clip, sclip]
    engine.run(request(photo_file, method="clip"))  # kept, not built again; now the most recently used
    assert engine.models.built() == [sclip, clip]
    again = engine.run(request(photo_file))  # built again; sclip goes, not clip (built before it)
    assert engine.models.built() == [clip, cass]
    assert builds == [cass, clip, sclip, cass]
    np.testing.assert_array_equal(again.result.probs, first.result.probs)
    np.testing.assert_array_equal(again.result.labels, first.result.labels)


def test_old_request_folders_are_deleted(weights_dir, tmp_path, photo_file):
    options = Options(clip_path=str(weights_dir / "tiny_clip.pt"), cfg_options=dict(TINY_OPTIONS), keep_results=2)
    engine = Engine(options, tmp_path / "out")
    files = [engine.run(request(photo_file, method="clip")).files for _ in range(3)]
    assert not files[0][1].exists() and all(f.exists() for f in files[1] + files[2])
    with pytest.raises(FileNotFoundError, match="deleted to make room"):
        class_heatmap(files[0][1], photo_file, ["sky", "grass", "cat"], "sky")


# ------------------------------------------------------------------ queue
def test_slot_serves_one_request_at_a_time_in_arrival_order():
    slot = ModelSlot()
    order, places, inside, overlaps = [], {}, [], []

    def worker(name):
        with slot.turn(lambda ahead: places.setdefault(name, []).append(ahead), poll=0.01):
            inside.append(name)
            if len(inside) > 1:
                overlaps.append(list(inside))
            order.append(name)
            time.sleep(0.05)
            inside.remove(name)

    first = threading.Thread(target=worker, args=("a",), daemon=True)
    with slot.turn():  # the model is busy: everyone queues
        first.start()
        time.sleep(0.05)
        later = [threading.Thread(target=worker, args=(n,), daemon=True) for n in "bc"]
        for thread in later:
            thread.start()
            time.sleep(0.05)
        assert slot.busy
    for thread in [first, *later]:
        thread.join(5)
    assert order == ["a", "b", "c"] and overlaps == []
    assert places == {"a": [1], "b": [2, 1], "c": [3, 2, 1]}
    assert not slot.busy


def test_a_request_that_leaves_the_line_holds_up_nobody():
    slot, served = ModelSlot(), []

    def leave(ahead):
        raise ConnectionError("the page was closed")

    def wait_then_leave():
        with pytest.raises(ConnectionError), slot.turn(leave):
            served.append("leaver")

    def patient():
        with slot.turn(poll=0.01):
            served.append("patient")

    with slot.turn():
        leaver = threading.Thread(target=wait_then_leave, daemon=True)
        leaver.start()
        leaver.join(5)
        waiter = threading.Thread(target=patient, daemon=True)
        waiter.start()
        time.sleep(0.05)
    waiter.join(5)
    assert served == ["patient"] and not slot.busy


def test_cache_rejects_no_models():
    with pytest.raises(ValueError, match="at least 1"):
        ModelCache(0)


# ------------------------------------------------------------------ one-line errors
@pytest.mark.parametrize("change, message", [
    (dict(classes=""), "class list: no classes"),
    (dict(classes="cat, , dog"), "class list: class 2 has an empty name: ''"),
    (dict(classes="cat, dog, cat"), "class list: classes 1 and 3 are the same: 'cat'"),
    (dict(method="segformer"), "unknown method 'segformer'; methods: " + ", ".join(METHODS)),
    (dict(vfm="dinov2_vitb14"), "no weights for VFM dinov2_vitb14 here: put dinov2_vitb14_pretrain.pth in "),
    (dict(clip="ViT-L/14"), "no weights for CLIP ViT-L/14 here: put ViT-L-14.pt in "),
    (dict(prob_thd=1.5), "the probability threshold must lie in [0, 1], got 1.5"),
    (dict(preset="KITTI"), "unknown preset 'KITTI'; presets: VOC21, "),
])
def test_bad_requests_are_one_line(engine, photo_file, change, message):
    with pytest.raises(Exception) as info:
        engine.run(request(photo_file, **change))
    text = user_message(info.value)
    assert text.startswith(message) and "\n" not in text
    assert engine.models.built() == []  # checked before any weight is read


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n not really", "cannot read image broken.png: not an image format OpenCV can decode"),
    (b"", "cannot read image broken.png: not an image format OpenCV can decode"),
])
def test_corrupt_image_message_names_the_upload_not_the_server_path(engine, tmp_path, content, message):
    server_path = tmp_path / "gradio" / "0f3a" / "upload.png"
    server_path.parent.mkdir(parents=True)
    server_path.write_bytes(content)
    with pytest.raises(Exception) as info:
        engine.run(request(server_path))
    assert user_message(info.value, {str(server_path): "broken.png"}) == message


def test_missing_weights_offline_name_the_file_and_the_flag(tmp_path, photo_file):
    engine = Engine(Options(), tmp_path / "out")  # no flags, empty weights cache, no network (conftest)
    with pytest.raises(WeightsError) as info:
        engine.run(request(photo_file, method="clip"))
    text = user_message(info.value)
    assert text.startswith("ViT-B-16.pt is not in ") and "--clip-path" in text and "\n" not in text
    assert engine.models.built() == []


def test_unexpected_errors_are_one_line_and_logged(caplog):
    with caplog.at_level(logging.ERROR, logger="cass.webapp"):
        text = user_message(RuntimeError("boom\nsecond line"))
    assert text == "internal error (RuntimeError: boom); the server log has the details"
    assert "Traceback" not in text and caplog.records[0].exc_info is not None


# ------------------------------------------------------------------ outputs
def test_heatmap_shows_the_class_probability(engine, photo_file):
    outcome = engine.run(request(photo_file))
    names = outcome.result.class_names
    cls = outcome.legend[0].index
    picture, line = class_heatmap(outcome.files[1], photo_file, names, names[cls])
    heat = np.asarray(picture.convert("L"), dtype=float)
    probs = outcome.result.probs[cls]
    assert heat.shape == probs.shape
    high, low = probs > np.quantile(probs, 0.9), probs < np.quantile(probs, 0.1)
    assert heat[high].mean() > heat[low].mean() + 10  # inferno: brighter where the class is likelier
    assert line == f"p({names[cls]}): max {probs.max():.2f}, mean {probs.mean():.2f}"
    with pytest.raises(VocabularyError, match="no class 'dog' in this result"):
        class_heatmap(outcome.files[1], photo_file, names, "dog")


def test_legend_html_escapes_class_names():
    legend = [LegendEntry(2, "<b>sky</b>", 61.34, (10, 20, 30)), LegendEntry(0, "grass & moss", 0.01, (1, 2, 3))]
    page = legend_html(legend)
    assert "<b>" not in page and "&lt;b&gt;sky&lt;/b&gt;" in page and "grass &amp; moss" in page
    assert page.count("<li>") == 2 and "rgb(10, 20, 30)" in page
    assert ">61.3%<" in page and ">&lt;0.1%<" in page


def test_the_model_does_not_import_gradio():
    code = "import sys, cass, cass.webapp; cass.Segmenter; assert 'gradio' not in sys.modules, 'gradio imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ app.py
@pytest.fixture(scope="module")
def app():
    pytest.importorskip("gradio", reason="the app needs gradio: pip install -e .[app]")
    yield load_script("app.py", "app")
    sys.modules.pop("app", None)


def test_app_flags(app):
    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.max_models) == ("127.0.0.1", 7860, False, 3)
    args = app.parse_args(["--port", "8080", "--host", "0.0.0.0", "--share", "--dino-path", "d.pth",
                           "--cfg-options", "model.h_threshold=0.1"])
    options = app.options_from(args)
    assert (args.port, args.host, args.share) == (8080, "0.0.0.0", True)
    assert options.vfm_path == "d.pth" and options.cfg_options == {"model.h_threshold": 0.1}
    for bad in (["--opacity", "2"], ["--max-models", "0"], ["--port", "70000"]):
        with pytest.raises(SystemExit) as exit_info:
            app.parse_args(bad)
        assert exit_info.value.code == 2


def test_page_offers_every_method_and_the_backbones_with_weights(app, engine):
    page = app.build_page(engine)
    config = page.get_config_file()
    by_id = {c["props"].get("elem_id"): c["props"] for c in config["components"] if c["props"].get("elem_id")}
    assert [value for _, value in by_id["method"]["choices"]] == list(METHODS)
    assert [value for _, value in by_id["clip"]["choices"]] == ["ViT-B/16"]
    assert [value for _, value in by_id["vfm"]["choices"]] == ["dino_vitb8"]
    assert by_id["preset"]["value"] == "ADE20K" and len(by_id["preset"]["choices"]) == 8
    assert by_id["input-image"]["sources"] == ["upload", "clipboard", "webcam"]
    markdown = " ".join(str(c["props"].get("value")) for c in config["components"] if c["type"] == "markdown")
    assert "dinov2_vitl14: put dinov2_vitl14_pretrain.pth in" in markdown


def test_app_exits_with_one_line_on_a_bad_config(app, tmp_path, capsys):
    assert app.main(["--config", str(tmp_path / "none.py")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"app.py: config not found: {tmp_path / 'none.py'}"


# ------------------------------------------------------------------ a method's own protocol
def test_the_model_cache_is_its_own_module():
    import cass.model_cache
    import cass.webapp

    assert cass.webapp.ModelCache is cass.model_cache.ModelCache and cass.webapp.ModelSlot is cass.model_cache.ModelSlot
    code = "import sys, cass.model_cache; assert 'cass.webapp' not in sys.modules and 'gradio' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_methods_presets_are_its_published_settings(weights_dir, tmp_path):
    """--protocol published (the app's default): each benchmark's preset of a method is its published
    short side, windows, thresholds and class file; CASS's are the benchmark configs' either way;
    --protocol cass gives every method the configs' settings; --cfg-options win over both."""
    engine = Engine(Options(clip_path=str(weights_dir / "tiny_clip.pt"), cfg_options=dict(TINY_OPTIONS)),
                    tmp_path / "out")
    published = METHODS["trident"].protocol["cfg_voc21"]
    voc = engine.preset("trident", "VOC21")
    assert voc.published and voc.vfm == "dino_vitb16" and voc.scale == (2048, published["short_side"]) == (2048, 448)
    assert voc.settings == {key: value for key, value in published.items()
                            if key not in ("short_side", "class_file", "vfm", "sam_model_type")}
    assert voc.class_file == CONFIGS_DIR / published["class_file"]
    assert voc.label == "VOC21: short side 448, 336 px windows, stride 224, threshold 0.2, classes proxyclip/cls_voc21.txt"
    assert engine.preset("trident", "ADE20K").settings["coarse_thresh"] == 0.05
    assert [p.label for p in engine.presets_for("cass").values()] == [p.label for p in load_presets().values()]
    with pytest.raises(KeyError, match="unknown method 'segformer'"):
        engine.presets_for("segformer")

    cass_protocol = Engine(Options(clip_path=str(weights_dir / "tiny_clip.pt"), protocol="cass",
                                   cfg_options={**TINY_OPTIONS, "model.slide_stride": 100}), tmp_path / "out2")
    voc = cass_protocol.preset("trident", "VOC21")
    assert not voc.published and voc.scale == (2048, 336) and voc.class_file == CONFIGS_DIR / "cls_voc21.txt"
    assert voc.settings == dict(slide_crop=0, slide_stride=100, prob_thd=0.1)  # the explicit option wins


def test_the_engine_runs_a_method_with_its_presets_published_settings(weights_dir, tmp_path, photo_file):
    """Trident with the VOC21 preset runs as Segmenter(cfg_voc21, protocol='published') does: its windows,
    resize and SAM settings reach the shared model (and SAM's guide), and the next preset replaces them."""
    from cass.random_weights import TINY_SAM, write_sam

    sam = write_sam(tmp_path / "sam_vit_b_01ec64.pth", tiny=True)
    sam_options = {f"model.sam_overrides.{key}": value for key, value in TINY_SAM["vit_b"].items()}
    sam_options["model.sam_refinement"] = False  # SAM's aggregation only: half the time on the CPU
    engine = Engine(Options(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                            sam_path=str(sam), cfg_options={**TINY_OPTIONS, **sam_options}), tmp_path / "out")
    outcome = engine.run(request(photo_file, method="trident", preset="VOC21", prob_thd=0.2))
    expected = Segmenter(CONFIGS_DIR / "cfg_voc21.py", classes=["sky", "grass", "cat"], protocol="published",
                         clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                         sam_path=str(sam), method="trident", vfm="dino_vitb8", vfm_overrides=TINY_VFM,
                         sam_overrides=TINY_SAM["vit_b"], sam_refinement=False)
    assert "VOC21 windows (trident as published)" in outcome.summary
    model = engine.models.slot(("trident", "ViT-B/16", "dino_vitb8")).model.model
    for part in ("window", "output", "method", "sam"):
        assert getattr(model.config, part) == getattr(expected.model.config, part), part
    assert model.sam_guide.config == expected.model.sam_guide.config
    assert engine.models.slot(("trident", "ViT-B/16", "dino_vitb8")).model.scale == expected.scale == (2048, 448)
    result = expected(photo_file)
    np.testing.assert_allclose(outcome.result.probs, result.probs, atol=1e-5)
    np.testing.assert_array_equal(outcome.result.labels, result.labels)

    segmenter = engine.models.slot(("trident", "ViT-B/16", "dino_vitb8")).model
    engine.configure(segmenter, engine.preset("trident", "Cityscapes"), 0.0, False, False)  # the next request's
    published = METHODS["trident"].protocol["cfg_city_scapes"]
    assert segmenter.scale == (2048, 688) and segmenter.model.sam_guide.config.sam_halves
    assert (segmenter.model.config.sam.cos_fac, segmenter.model.config.sam.coarse_thresh) == (
        published["cos_fac"], published["coarse_thresh"]) == (3.0, 0.1)


def test_choosing_a_method_shows_its_presets(app, engine):
    """The preset menu, threshold, VFM and (unedited) vocabulary follow the method chosen in the page."""
    import gradio as gr

    cass_voc = engine.preset("cass", "VOC21").classes_text()
    vfm, preset, threshold, classes, filled, masks = app.method_changed(engine, "trident", "VOC21", "VOC21",
                                                                        cass_voc, cass_voc)
    assert [label for label, _ in preset["choices"]] == [p.label for p in engine.presets_for("trident").values()]
    assert preset["value"] == "VOC21" and threshold == 0.2
    assert "VOC21: short side 448, 336 px windows, stride 224, threshold 0.2" in preset["choices"][0][0]
    assert classes == filled == (CONFIGS_DIR / "proxyclip" / "cls_voc21.txt").read_text().strip()  # Trident's names
    assert vfm["interactive"] and "value" not in vfm  # its dino_vitb16 has no weights here: the VFM stays
    assert masks == "none"
    # edited classes stay; a CLIP-only method greys the VFM out; CASS's own VFM is selected again
    _, _, _, kept, _, _ = app.method_changed(engine, "sclip", "VOC21", "VOC21", "cat, dog", cass_voc)
    assert kept == gr.skip()
    vfm, preset, threshold, _, _, _ = app.method_changed(engine, "sclip", "ADE20K", None, "cat", None)
    assert not vfm["interactive"] and preset["value"] == "ADE20K" and threshold == 0.0
    vfm, _, threshold, _, _, _ = app.method_changed(engine, "cass", "VOC21", None, "cat", None)
    assert vfm["value"] == "dino_vitb8" and threshold == 0.1
    # CorrCLIP works on region masks: its published generator, SAM2 Hiera-L, is selected
    *_, masks = app.method_changed(engine, "corrclip", "ADE20K", None, "cat", None)
    assert masks == "sam2_hiera_large"


def test_app_protocol_flag(app):
    assert app.parse_args([]).protocol == "published" and app.options_from(app.parse_args([])).protocol == "published"
    assert app.options_from(app.parse_args(["--protocol", "cass"])).protocol == "cass"


# ------------------------------------------------------------------ region masks
def test_region_masks_are_a_menu_of_the_generators():
    from cass.webapp import mask_menu

    menu = mask_menu()
    assert list(menu)[:6] == ["none", "sam2_hiera_large", "sam2_hiera_base_plus", "sam2_hiera_small",
                              "sam2_hiera_tiny", "felzenszwalb"]
    assert "files" not in menu  # it finds masks by an image's file name: an upload has none


def test_region_masks_vote_any_method_as_the_segmenter_does(engine, weights_dir, photo_file):
    """CASS with Felzenszwalb's regions: the page's labels are the Segmenter's with region_vote and the same
    masks; the masks are drawn and offered as CorrCLIP's archive; the next request without masks votes no more."""
    from cass.masks import read_mask_file
    from cass.masks.superpixels import FelzenszwalbMasks
    from cass.visualize import render_regions

    outcome = engine.run(request(photo_file, masks="felzenszwalb"))
    segmenter = direct(weights_dir, ["sky", "grass", "cat"], region_vote=True)
    bgr = segmenter.load(photo_file)
    regions = FelzenszwalbMasks()(np.ascontiguousarray(bgr[..., ::-1]))
    expected = segmenter.segment_loaded([bgr], region_masks=[regions])[0]
    np.testing.assert_array_equal(outcome.region_masks, regions)
    np.testing.assert_array_equal(outcome.result.labels, expected.labels)
    np.testing.assert_allclose(outcome.result.probs, expected.probs, atol=1e-6)
    plain = direct(weights_dir, ["sky", "grass", "cat"])(photo_file)
    assert not np.array_equal(plain.labels, expected.labels), "the vote must change something here"
    count = len(np.unique(regions))
    assert f", felzenszwalb masks ({count} regions); " in outcome.summary
    np.testing.assert_array_equal(np.asarray(outcome.regions), np.asarray(render_regions(outcome.result.image,
                                                                                         regions)))
    assert outcome.files[3].name == "my_photo_regions.npz"
    np.testing.assert_array_equal(read_mask_file(outcome.files[3], regions.shape), regions)
    assert engine.mask_generators.built() == [("masks", "felzenszwalb", None)]

    again = engine.run(request(photo_file))  # the same model, no masks: no vote
    np.testing.assert_array_equal(again.result.labels, plain.labels)
    assert again.regions is None and len(again.files) == 3


def test_corrclip_runs_on_the_chosen_masks(weights_dir, tmp_path, photo_file):
    """CorrCLIP in the app (its published ADE20K settings) equals the Segmenter given the same masks; without
    masks it is a one-line error."""
    from cass.config import ConfigError
    from cass.masks.superpixels import FelzenszwalbMasks
    from cass.random_weights import write_clip

    clip = write_clip(tmp_path / "clip6.pt", tiny=True, layers=6)  # the spatial branch needs blocks 5..9 of 6+
    engine = Engine(Options(clip_path=str(clip), vfm_path=str(weights_dir / "tiny_dino.pth"),
                            cfg_options=dict(TINY_OPTIONS)), tmp_path / "out")
    assert engine.default_masks("corrclip", "ADE20K") == "sam2_hiera_large"
    outcome = engine.run(request(photo_file, method="corrclip", masks="felzenszwalb"))
    expected = Segmenter(CONFIGS_DIR / "cfg_ade20k.py", classes=["sky", "grass", "cat"], protocol="published",
                         clip_path=str(clip), vfm_path=str(weights_dir / "tiny_dino.pth"), method="corrclip",
                         vfm="dino_vitb8", vfm_overrides=TINY_VFM, mask_generator=None)
    bgr = expected.load(photo_file)
    regions = FelzenszwalbMasks()(np.ascontiguousarray(bgr[..., ::-1]))
    result = expected.segment_loaded([bgr], region_masks=[regions])[0]
    np.testing.assert_allclose(outcome.result.probs, result.probs, atol=1e-5)
    np.testing.assert_array_equal(outcome.result.labels, result.labels)
    assert "ADE20K windows (corrclip as published), felzenszwalb masks" in outcome.summary
    message = one_line_error(lambda: engine.run(request(photo_file, method="corrclip")), "choose a mask generator",
                             error=ConfigError)
    assert message == "corrclip works on region masks: choose a mask generator"


def test_sam2_masks_take_the_mask_path_flag(weights_dir, tmp_path, photo_file):
    """SAM2 of the config's model reads --mask-path (a corrupt file is one line); an unknown choice too."""
    broken = tmp_path / "sam2_hiera_large.pt"
    broken.write_bytes(b"not a checkpoint")
    engine = Engine(Options(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                            mask_path=str(broken), cfg_options=dict(TINY_OPTIONS)), tmp_path / "out")
    one_line_error(lambda: engine.run(request(photo_file, masks="sam2_hiera_large")), str(broken),
                   "not a readable SAM2 checkpoint")
    one_line_error(lambda: engine.run(request(photo_file, masks="sam3")), "unknown region masks 'sam3'",
                   error=KeyError)
    # another SAM2 model: its release file, not in the (empty) weights cache, and no network
    message = one_line_error(lambda: engine.run(request(photo_file, masks="sam2_hiera_tiny")), "sam2_hiera_tiny.pt")
    assert str(broken) not in message
