"""The mmseg adapter: the registered segmentor gives exactly the model's output,
and cass.images computes exactly mmseg's test pipeline."""
import cv2
import numpy as np
import pytest
import torch
from conftest import model_keys, segmentor_cfg
from mmcv.transforms import LoadImageFromFile, Resize
from mmengine.dataset import Compose
from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import cass.mmseg  # noqa: F401 - registers the segmentor
from cass import build_model
from cass.images import normalise, read_image, resize_keep_ratio


def random_bgr(h, w, seed=0, channels=3, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    base = rng.integers(0, top + 1, (h // 8 + 2, w // 8 + 2, channels)).astype(np.float32)
    image = cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR).round().astype(dtype)
    return image[..., 0] if channels == 1 else image


@pytest.fixture()
def segmentor(weights_dir, class_file):
    return MODELS.build(dict(segmentor_cfg(weights_dir, class_file), _scope_="mmseg"))


def mmseg_inputs(path, scale, segmentor):
    pipeline = Compose([LoadImageFromFile(), Resize(scale=scale, keep_ratio=True), PackSegInputs()])
    packed = pipeline(dict(img_path=str(path)))
    return segmentor.data_preprocessor(dict(inputs=[packed["inputs"]], data_samples=[packed["data_samples"]]))


@pytest.mark.parametrize("name, h, w, channels, dtype, scale", [
    ("photo.png", 120, 160, 3, np.uint8, (2048, 336)),
    ("odd.jpg", 97, 301, 3, np.uint8, (2048, 336)),
    ("gray.png", 90, 120, 1, np.uint8, (2048, 336)),
    ("rgba.png", 90, 120, 4, np.uint8, (2048, 336)),
    ("deep.png", 64, 80, 3, np.uint16, (2048, 336)),
    ("street.png", 100, 200, 3, np.uint8, (2048, 560)),
    ("panorama.png", 40, 900, 3, np.uint8, (2048, 336)),
])
def test_images_equal_mmseg_test_pipeline(segmentor, tmp_path, name, h, w, channels, dtype, scale):
    path = tmp_path / name
    cv2.imwrite(str(path), random_bgr(h, w, channels=channels, dtype=dtype))
    ours = normalise(resize_keep_ratio(read_image(path), scale))
    theirs = mmseg_inputs(path, scale, segmentor)["inputs"][0]
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)


def test_segmentor_equals_the_model(segmentor, weights_dir, class_file, tmp_path):
    model = build_model(**model_keys(weights_dir, class_file))
    paths = []
    for i, (h, w) in enumerate([(120, 160), (150, 130)]):  # two sizes: padded into one batch
        paths.append(tmp_path / f"image{i}.png")
        cv2.imwrite(str(paths[-1]), random_bgr(h, w, seed=i))
    pipeline = Compose([LoadImageFromFile(), Resize(scale=(2048, 224), keep_ratio=True), PackSegInputs()])
    packed = [pipeline(dict(img_path=str(p))) for p in paths]
    samples = segmentor.test_step(dict(inputs=[p["inputs"] for p in packed],
                                       data_samples=[p["data_samples"] for p in packed]))
    images = [read_image(p) for p in paths]
    expected = model([normalise(resize_keep_ratio(img, (2048, 224))) for img in images],
                     [img.shape[:2] for img in images])
    for sample, prediction in zip(samples, expected):
        assert torch.equal(sample.seg_logits.data, prediction.probs)
        assert torch.equal(sample.pred_sem_seg.data[0], prediction.labels)


def test_released_name_and_settings_reach_the_model(weights_dir, class_file):
    segmentor = MODELS.build(dict(segmentor_cfg(weights_dir, class_file, slide_crop=0, low_rank=None,
                                                energy_threshold=0.5), type="CASS_segmentor", _scope_="mmseg"))
    cfg = segmentor.model.config
    assert cfg.window.slide_crop == 0 and cfg.spectral.low_rank is None and cfg.spectral.energy_threshold == 0.5
    assert not any(p.requires_grad for p in segmentor.parameters())


def test_loss_bad_options_and_padding(segmentor, weights_dir, class_file):
    with pytest.raises(NotImplementedError, match="training-free"):
        segmentor.loss(torch.zeros(1, 3, 8, 8), [])
    with pytest.raises(ValueError, match="attn_strategy"):
        MODELS.build(dict(segmentor_cfg(weights_dir, class_file, attn_strategy="fancy"), _scope_="mmseg"))
    with pytest.raises(ValueError, match="unknown model setting"):
        MODELS.build(dict(segmentor_cfg(weights_dir, class_file, slide_crap=1), _scope_="mmseg"))
    data = dict(inputs=[torch.zeros(3, 20, 30, dtype=torch.uint8), torch.zeros(3, 25, 10, dtype=torch.uint8)],
                data_samples=[SegDataSample(), SegDataSample()])
    assert segmentor.data_preprocessor(data, training=False)["inputs"].shape == (2, 3, 25, 30)


def test_encode_decode_is_the_query_logits(segmentor):
    image = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(segmentor.encode_decode(image)[0], segmentor.model.query_logits([image[0]])[0])
