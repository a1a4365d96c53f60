"""The image API (no mmseg): equal to the model on the pipeline's input, image kinds, bad input."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_VFM
from PIL import Image

import cass.text
from cass import ConfigError, VocabularyError, WeightsError
from cass.api import ImageError, Segmenter
from cass.config_files import MMSEG_KEYS, load_config, model_keys, with_vfm_path
from cass.images import normalise, read_image, resize_keep_ratio
from cass.visualize import class_colors, legend_entries, render

CLASSES = ["sky, cloud", "cat", "grass"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def random_rgb(h, w, seed=0):
    """Smooth random colours: blocks of 8 pixels, bilinearly upsampled."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    return cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR).round().astype(np.uint8)


@pytest.fixture()
def make(weights_dir):
    def build(classes=CLASSES, **kwargs):
        return Segmenter(classes=classes, clip_path=str(weights_dir / "tiny_clip.pt"),
                         vfm_path=str(weights_dir / "tiny_dino.pth"), vfm_overrides=TINY_VFM, **kwargs)
    return build


@pytest.fixture()
def segmenter(make):
    """Fast: short side resized to 112, one pass over the whole image."""
    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(448, 112), keep_ratio=True),
                dict(type="PackSegInputs")]
    return make(slide_crop=0, cfg_options={"test_pipeline": pipeline})


def assert_same(a, b):
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_equals_the_model_on_the_pipeline_input(make, tmp_path):
    rgb = random_rgb(120, 160)
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    segmenter = make()
    assert segmenter.scale == (2048, 336)  # the ADE20K config's Resize
    resized = resize_keep_ratio(read_image(path), segmenter.scale)
    assert resized.shape == (336, 448, 3)  # short side 336: 2 x 3 crops
    expected = segmenter.model([normalise(resized)], [(120, 160)])[0]
    probs, labels = expected.probs.numpy(), expected.labels.numpy()
    assert probs.shape == (3, 120, 160) and len(np.unique(labels)) > 1
    for image in (path, rgb, Image.fromarray(rgb)):
        result = segmenter(image)
        np.testing.assert_array_equal(result.probs, probs)
        np.testing.assert_array_equal(result.labels, labels)
        np.testing.assert_array_equal(result.image, rgb)
        assert result.class_names == ["sky", "cat", "grass"]
    batch = segmenter.segment([path, random_rgb(64, 90, 9)])
    np.testing.assert_array_equal(batch[0].labels, labels)
    assert batch[1].labels.shape == (64, 90)


def test_text_embeddings_computed_once_per_vocabulary(segmenter, monkeypatch):
    calls = []
    original = cass.text.query_embeddings

    def counting(model, queries, **kwargs):
        calls.append(list(queries))
        return original(model, queries, **kwargs)

    monkeypatch.setattr(cass.text, "query_embeddings", counting)
    segmenter(random_rgb(64, 80, 1))
    segmenter(random_rgb(70, 50, 2))
    assert calls == [["sky", "cloud", "cat", "grass"]]
    segmenter.set_classes(["dog", "road"])
    result = segmenter(random_rgb(64, 80, 1))
    assert calls[1:] == [["dog", "road"]] and result.probs.shape == (2, 64, 80)
    assert result.class_names == ["dog", "road"]


def test_shares_and_probabilities(segmenter):
    result = segmenter(random_rgb(60, 90, 3))
    assert result.probs.dtype == np.float32 and result.labels.dtype == np.int64
    assert ((result.probs >= 0) & (result.probs <= 1)).all()
    np.testing.assert_array_equal(result.probs.argmax(0), result.labels)
    counts = np.bincount(result.labels.ravel(), minlength=3)
    shares = result.shares()
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert shares == {result.class_names[c]: pytest.approx(100 * counts[c] / result.labels.size)
                      for c in range(3) if counts[c]}


@pytest.mark.parametrize("kind", ["rgb16", "gray16", "gray8", "rgba", "palette"])
def test_image_kinds_equal_their_8bit_rgb(segmenter, tmp_path, kind):
    rgb = random_rgb(48, 64, 4)
    path = tmp_path / f"{kind}.png"
    if kind == "rgb16":
        rgb16 = rgb.astype(np.uint16) * 256 + np.random.default_rng(0).integers(0, 256, rgb.shape, dtype=np.uint16)
        cv2.imwrite(str(path), rgb16[..., ::-1])
        array, expected = rgb16, rgb  # the high byte, as OpenCV keeps
    elif kind == "gray16":
        gray16 = rgb[..., 0].astype(np.uint16) * 257
        Image.fromarray(gray16).save(path)
        array, expected = gray16, np.repeat(rgb[..., :1], 3, axis=2)
    elif kind == "gray8":
        Image.fromarray(rgb[..., 1]).save(path)
        array, expected = rgb[..., 1], np.repeat(rgb[..., 1:2], 3, axis=2)
    elif kind == "rgba":
        alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
        array = np.dstack([rgb, alpha])
        Image.fromarray(array).save(path)
        expected = rgb  # alpha dropped, as mmseg's loader (OpenCV) does
    else:
        palette_image = Image.fromarray(rgb).quantize(16)
        palette_image.save(path)
        array, expected = palette_image, np.asarray(palette_image.convert("RGB"))
    reference = segmenter(expected)
    for image in (path, array, Image.open(path)):
        result = segmenter(image)
        assert_same(result, reference)
        np.testing.assert_array_equal(result.image, expected)


def test_cmyk_images(segmenter, tmp_path):
    """CMYK JPEGs are decoded to colour by OpenCV (as mmseg's loader does); CMYK PIL images are converted to RGB."""
    cmyk = Image.fromarray(random_rgb(48, 64, 8)).convert("CMYK")
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path)
    from_file = segmenter(path)
    np.testing.assert_array_equal(from_file.image, read_image(path)[..., ::-1])
    assert_same(from_file, segmenter(read_image(path)[..., ::-1]))
    from_pil = segmenter(cmyk)
    np.testing.assert_array_equal(from_pil.image, np.asarray(cmyk.convert("RGB")))
    assert from_pil.labels.shape == (48, 64)


def test_one_pixel_and_elongated_images(make):
    segmenter = make()
    tiny = segmenter(np.full((1, 1, 3), 200, np.uint8))  # resized to 336 x 336
    assert tiny.probs.shape == (3, 1, 1) and tiny.labels.shape == (1, 1)
    assert np.isfinite(tiny.probs).all() and tiny.labels[0, 0] == tiny.probs[:, 0, 0].argmax()
    wide = segmenter(random_rgb(24, 1000, 5))  # resized to 49 x 2048: one row of crops
    assert wide.probs.shape == (3, 24, 1000)
    for shape in [(1, 3000, 3), (2, 10000, 3)]:  # resized to less than a patch, or to zero rows
        with pytest.raises(ImageError, match="elongated") as err:
            segmenter(np.zeros(shape, np.uint8))
        assert "\n" not in str(err.value)


def test_large_image_is_resized_first(make, tmp_path, monkeypatch):
    """The model receives the image resized by mmseg's keep-ratio rule; only the output is at full size
    (a 10000 x 10000 image takes ~11 s and 6.5 GB with 4 classes, measured; 12 megapixels here)."""
    segmenter = make(classes=["sky", "cat"])
    received = []
    forward = segmenter.model.forward

    def spy(images, *args, **kwargs):
        received.extend(tuple(image.shape) for image in images)
        return forward(images, *args, **kwargs)

    monkeypatch.setattr(segmenter.model, "forward", spy)
    height, width = 3000, 4000
    path = tmp_path / "large.png"
    cv2.imwrite(str(path), np.full((height, width, 3), 120, np.uint8))
    result = segmenter(path)
    # mmcv.imrescale: the largest factor that keeps the long side within the scale's long edge and the
    # short side within its short edge; sides rounded half up
    long_edge, short_edge = max(segmenter.scale), min(segmenter.scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    assert received == [(3, int(height * factor + 0.5), int(width * factor + 0.5))] == [(3, 336, 448)]
    assert result.probs.shape == (2, height, width) and result.labels.shape == (height, width)
    probs = result.probs[:, ::7, ::7]
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_array_equal(probs.argmax(0), result.labels[::7, ::7])


def test_vfm_path_and_its_old_name(weights_dir, tmp_path):
    """``vfm_path`` loads the VFM's weights; ``dino_path`` is the same; both at once is a one-line error."""
    common = dict(classes=["sky", "cat"], clip_path=str(weights_dir / "tiny_clip.pt"), vfm_overrides=TINY_VFM,
                  slide_crop=0)
    dino = str(weights_dir / "tiny_dino.pth")
    image = random_rgb(40, 56, 11)
    assert_same(Segmenter(vfm_path=dino, **common)(image), Segmenter(dino_path=dino, **common)(image))
    with pytest.raises(WeightsError, match="absent.pth"):
        Segmenter(vfm_path=str(tmp_path / "absent.pth"), **common)
    with pytest.raises(ConfigError, match="give the VFM's weights once") as err:
        Segmenter(vfm_path=dino, dino_path=dino, **common)
    assert "\n" not in str(err.value)


def test_config_model_keys():
    """model_keys drops mmseg's own keys only; with_vfm_path uses the config's name for the VFM's weights."""
    cfg = load_config(CONFIGS / "cfg_voc21.py", {"model.slide_stride": 56})
    keys = model_keys(cfg)
    assert set(keys) == set(cfg.model) - set(MMSEG_KEYS) and cfg.model.type == "CASSSegmentor"
    assert keys["slide_stride"] == 56 and keys["name_path"] == str(CONFIGS / "cls_voc21.txt")
    old = with_vfm_path({"dino_path": None, "prob_thd": 0.1}, "d.pth")
    assert old == {"dino_path": "d.pth", "prob_thd": 0.1}
    assert with_vfm_path({"prob_thd": 0.1}, "d.pth") == {"vfm_path": "d.pth", "prob_thd": 0.1}
    assert with_vfm_path({"dino_path": None}, None) == {"dino_path": None}


BAD_IMAGES = [
    ("missing.png", "image not found: missing.png"),
    (".", "not a file: ."),
    ("garbage.png", "cannot read image garbage.png: not an image format OpenCV can decode"),
    (np.zeros((10, 10, 2), np.uint8), "expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape"),
    (np.zeros((0, 10, 3), np.uint8), "empty image array"),
    (np.zeros((10, 10, 3), np.int64), "unsupported image dtype int64"),
    (np.full((10, 10, 3), 3.0), "float image values must lie in [0, 1]"),
    ([[1, 2], [3, 4]], "expected an image path, an RGB array or a PIL image, got list"),
]


def test_bad_images_give_one_line_errors(segmenter, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    for image, message in BAD_IMAGES:
        with pytest.raises(ImageError) as err:
            segmenter(image)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("classes, message", [
    ([], "no classes"), (["cat", "cat"], "are the same"), (["cat", "dog, dog"], "repeats a name"),
    (["cat", ""], "empty name"), ("cat, dog", "must be a list"),
])
def test_bad_vocabulary_fails_before_loading_weights(classes, message, tmp_path):
    with pytest.raises(VocabularyError, match=message):
        Segmenter(classes=classes, clip_path=str(tmp_path / "absent.pt"))
    with pytest.raises(WeightsError, match="absent.pt"):
        Segmenter(classes=["cat"], clip_path=str(tmp_path / "absent.pt"))


def test_offline_public_weights_name_the_file_and_flag():
    with pytest.raises(WeightsError, match=r"ViT-B-16.pt .*--clip-path") as err:
        Segmenter(classes=["cat"])
    assert "\n" not in str(err.value)


def test_render_overlay_and_legend():
    labels = np.zeros((40, 30), np.int64)
    labels[:10], labels[30:, :15] = 2, 3  # class 1 absent
    image = random_rgb(40, 30, 6)
    names = ["sky", "cat", "grass", "road"]
    colors = class_colors(4)
    assert len({tuple(c) for c in colors}) == 4
    picture, entries = render(image, labels, names, opacity=0.5)
    assert [(e.index, e.name) for e in entries] == [(0, "sky"), (2, "grass"), (3, "road")]
    assert [e.share for e in entries] == pytest.approx([100 * 750 / 1200, 100 * 300 / 1200, 100 * 150 / 1200])
    assert entries == legend_entries(labels, names, colors)
    pixels = np.asarray(picture)
    assert pixels.shape[0] >= 40 and pixels.shape[1] > 30
    blend = (image.astype(np.float32) + colors[labels]) / 2
    assert np.abs(pixels[:40, :30] - blend).max() <= 1
    panel = {tuple(p) for p in pixels[:, 30:].reshape(-1, 3)}
    assert [tuple(c) in panel for c in colors] == [True, False, True, True]


def test_benchmark_configs(make):
    """Default = the ADE20K config; a config's class file is replaced by
    ``classes``; the Cityscapes config resizes to a short side of 560."""
    ade, default = make(config=CONFIGS / "cfg_ade20k.py"), make()
    assert ade.model.config == default.model.config and ade.scale == default.scale == (2048, 336)
    assert ade.model.config.text.global_semantics_weight == 0.3
    assert ade.class_names == ["sky", "cat", "grass"]
    assert len(make(config=CONFIGS / "cfg_ade20k.py", classes=None).class_names) == 150
    city = make(config=CONFIGS / "cfg_city_scapes.py")
    assert tuple(city.prepare(np.zeros((100, 200, 3), np.uint8)).shape) == (3, 560, 1120)
    assert city.model.config.text.prior_from_crop and not city.model.config.spectral.eigenscaling


def test_settings_reach_the_model(make):
    segmenter = make(precision="fp32", prob_thd=0.6, cfg_options={"model.h_threshold": 0.2}, device="cpu")
    cfg = segmenter.model.config
    assert (cfg.precision.clip, cfg.output.prob_thd, cfg.text.h_threshold, cfg.text.global_semantics_weight) == \
        ("fp32", 0.6, 0.2, 0.3)
    assert segmenter.device == torch.device("cpu")
    result = segmenter(random_rgb(40, 40, 7))
    top = result.probs.max(0)
    np.testing.assert_array_equal(result.labels, np.where(top < 0.6, 0, result.probs.argmax(0)))
    with pytest.raises(ValueError, match=r"unknown model setting.*'slide_crops'"):
        make(slide_crops=0)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        make(device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            make(device="cuda")
    with pytest.raises(ValueError, match="unsupported step 'RandomFlip'"):
        make(cfg_options={"test_dataloader.dataset.pipeline": [dict(type="LoadImageFromFile"), dict(type="RandomFlip")]})


def test_precision_sets_every_tower(make):
    """``precision`` is one precision for CLIP, the VFM and SAM: the config's per-tower ones are dropped."""
    towers = {"model.vfm_precision": "bf16", "model.sam_precision": "fp16"}
    kept = make(cfg_options=towers).model.config.precision
    assert (kept.vfm, kept.sam) == ("bf16", "fp16")
    cfg = make(precision="fp32", cfg_options=towers).model.config.precision
    assert (cfg.clip, cfg.vfm, cfg.sam) == ("fp32", None, None)
    assert cfg.resolve("cuda") == ("fp32", "fp32") and cfg.resolve_sam("cuda") == "fp32"


# ---------------------------------------------------------------- a method's published protocol
def test_published_protocol_gives_trident_its_voc21_settings(weights_dir, tmp_path):
    """protocol='published': Trident's VOC21 short side, windows, thresholds and class file (cass.protocols),
    under the explicit cfg_options (which win); the default, 'cass', keeps the config's settings."""
    from cass.methods import get_method
    from cass.random_weights import TINY_SAM, write_sam
    from cass.text import read_class_file

    sam = write_sam(tmp_path / "sam_vit_b_01ec64.pth", tiny=True)
    common = dict(config=CONFIGS / "cfg_voc21.py", clip_path=str(weights_dir / "tiny_clip.pt"),
                  vfm_path=str(weights_dir / "tiny_dino.pth"), sam_path=str(sam), vfm_overrides=TINY_VFM,
                  sam_overrides=TINY_SAM["vit_b"], text_cache_dir=False, method="trident")
    tiny_vfm = {"model.vfm": "dino_vitb8"}  # the tiny DINO file has ViT-B/8's layout (Trident's: dino_vitb16)
    published = get_method("trident").protocol["cfg_voc21"]
    segmenter = Segmenter(protocol="published", cfg_options={**tiny_vfm, "model.coarse_thresh": 0.3}, **common)
    keys = segmenter.model.config.to_keys()
    assert segmenter.protocol == "published" and segmenter.scale == (2048, published["short_side"]) == (2048, 448)
    assert (keys["slide_crop"], keys["slide_stride"], keys["prob_thd"]) == (336, 224, 0.2)
    for key, value in published.items():
        if key in keys and key != "coarse_thresh":
            assert keys[key] == value, key
    assert keys["coarse_thresh"] == 0.3 != published["coarse_thresh"]  # the explicit option wins
    assert segmenter.model.sam_guide.config == segmenter.model.config.sam
    queries = read_class_file(CONFIGS / published["class_file"])[0]  # ProxyCLIP's VOC21 names, as Trident ships
    assert list(segmenter.model.vocabulary.queries) == queries != read_class_file(CONFIGS / "cls_voc21.txt")[0]

    default = Segmenter(cfg_options=tiny_vfm, **common)  # protocol 'cass': the benchmark config's settings
    keys = default.model.config.to_keys()
    assert default.protocol == "cass" and default.scale == (2048, 336)
    assert (keys["slide_crop"], keys["prob_thd"], keys["coarse_thresh"]) == (0, 0.1, 0.2)
    assert list(default.model.vocabulary.queries) == read_class_file(CONFIGS / "cls_voc21.txt")[0]


def test_published_protocol_needs_a_benchmark_config(tmp_path):
    """A config that is no benchmark's has no published settings: a one-line error before any weight is
    read, except for CASS (its protocol is the config itself); an unknown protocol likewise."""
    custom = tmp_path / "my_config.py"
    custom.write_text(f"_base_ = [{str(CONFIGS / 'cfg_voc21.py')!r}]\n")
    absent = str(tmp_path / "absent.pt")
    with pytest.raises(ConfigError, match="^protocol 'published': my_config is not a benchmark config") as err:
        Segmenter(custom, classes=["cat"], clip_path=absent, method="sclip", protocol="published")
    assert "\n" not in str(err.value) and "use protocol 'cass'" in str(err.value)
    with pytest.raises(ConfigError, match="^unknown protocol 'paper'; protocols: published, cass$"):
        Segmenter(classes=["cat"], clip_path=absent, protocol="paper")
    for method, protocol in (("cass", "published"), ("sclip", "cass")):  # accepted: the weights are next
        with pytest.raises(WeightsError, match="absent.pt"):
            Segmenter(custom, classes=["cat"], clip_path=absent, method=method, protocol=protocol)
