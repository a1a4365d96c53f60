"""cass.masks.eomt: EoMT's panoptic segment ids as CorrCLIP's ``generate_mask`` ('eomt') computes them.

A tiny random EoMT (transformers' format, written with ``save_pretrained``) is run by the generator and
compared with (a) a restatement of the release's steps in numpy from the model's raw outputs, and (b) the
release's own code: its vendored ``eomt`` package (exported from the CorrCLIP repository: by default the
mirror ``/work/.mirror/zdk258+CorrCLIP/repo``, else ``CORRCLIP_RELEASED``) with the same weights, and its
``generate_mask`` read from ``corrclip_segmentor.py``, on the CPU without autocast. The release imports
lightning and torchmetrics for training and evaluation only; where they are not installed, minimal stand-ins
take their place (no computation of the masks goes through them).
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cass.config import ConfigError
from cass.masks import build_mask_generator
from conftest import one_line_error

RELEASED = Path(os.environ.get("CORRCLIP_RELEASED", "/work/.mirror/zdk258+CorrCLIP/repo"))
SIZE = 64  # the tiny model's input (the release's: 640)
CLASSES = 5
STUFF = (0, 3)  # stuff classes among the tiny model's five (the release's: COCO 80..132); two segments are of 0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=SIZE, patch_size=16,
            num_blocks=2, num_queries=16, num_labels=CLASSES)


def astronaut(height: int = 80, width: int = 104) -> np.ndarray:
    """scikit-image's astronaut downscaled: a real photo, (height, width, 3) uint8 RGB."""
    from skimage import data

    return np.array(Image.fromarray(data.astronaut()).resize((width, height), Image.BILINEAR))


@pytest.fixture(scope="module")
def tiny_eomt(tmp_path_factory) -> Path:
    """A random EoMT with 16 queries and 5 classes, 3 layers of width 32 (the last 2 with queries), input
    64 x 64 in patches of 16, and its image processor, in a save_pretrained folder. Its class scores are
    sharpened (x10) so that queries pass the 0.8 score threshold, and its mask logits softened (x0.1) so
    that several queries win pixels."""
    transformers = pytest.importorskip("transformers", reason="the eomt generator needs transformers")
    folder = tmp_path_factory.mktemp("tiny-eomt")
    torch.manual_seed(16)
    model = transformers.EomtForUniversalSegmentation(transformers.EomtConfig(**TINY)).eval()
    with torch.no_grad():
        model.class_predictor.weight.mul_(10.0)
        model.mask_head.fc3.weight.mul_(0.1)
        model.mask_head.fc3.bias.mul_(0.1)
    assert model.attn_mask_probs.tolist() == [1.0, 1.0]  # transformers would apply masked attention
    model.save_pretrained(folder)
    transformers.EomtImageProcessor(size={"shortest_edge": SIZE, "longest_edge": SIZE}).save_pretrained(folder)
    return folder


# --- the release's per-pixel panoptic step, restated ----------------------------------------------

def release_segments(mask_logits: np.ndarray, class_logits: np.ndarray, stuff=STUFF, threshold: float = 0.8,
                     overlap: float = 0.8) -> np.ndarray:
    """``to_per_pixel_preds_panoptic(...)[0][..., 1]`` of one image in numpy (float64) and loops:
    ``mask_logits`` (Q, H, W) at the image's size, ``class_logits`` (Q, C + 1)."""
    exp = np.exp(class_logits.astype(np.float64) - class_logits.max(-1, keepdims=True))
    probs = exp / exp.sum(-1, keepdims=True)
    no_object = class_logits.shape[-1] - 1
    out = np.full(mask_logits.shape[1:], -1, dtype=np.int64)
    kept = [q for q in range(len(probs)) if probs[q].argmax() != no_object and probs[q].max() > threshold]
    if not kept:
        return out
    masks = 1.0 / (1.0 + np.exp(-mask_logits[kept].astype(np.float64)))
    winner = (probs[kept].max(-1)[:, None, None] * masks).argmax(0)
    stuff_ids: dict[int, int] = {}
    next_id = 0
    for k, query in enumerate(kept):
        class_id = int(probs[query].argmax())
        own, won = masks[k] >= 0.5, winner == k
        final = own & won
        if own.sum() == 0 or won.sum() == 0 or final.sum() == 0 or won.sum() / own.sum() < overlap:
            continue
        if class_id in stuff:
            if class_id in stuff_ids:
                out[final] = stuff_ids[class_id]
                continue
            stuff_ids[class_id] = next_id
        out[final] = next_id
        next_id += 1
    return out


def release_label_map(folder: Path, image: np.ndarray, **settings) -> np.ndarray:
    """The release's eomt steps restated: PIL bilinear resize by min(64 / H, 64 / W) (rounded), zero padding at
    the bottom and right, (x / 255 - mean) / std, the network without masked attention, the mask logits
    upsampled to 64 x 64, cropped and upsampled to H x W, then :func:`release_segments`."""
    import transformers

    model = transformers.EomtForUniversalSegmentation.from_pretrained(folder).eval()
    model.attn_mask_probs.zero_()  # the release's network: masked_attn_enabled=False
    h, w = image.shape[:2]
    factor = min(SIZE / h, SIZE / w)
    new_h, new_w = round(h * factor), round(w * factor)
    padded = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    padded[:new_h, :new_w] = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    pixels = (padded.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        outputs = model(pixel_values=torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None])
        logits = F.interpolate(outputs.masks_queries_logits, (SIZE, SIZE), mode="bilinear")
        logits = F.interpolate(logits[:, :, :new_h, :new_w], (h, w), mode="bilinear")[0]
    return release_segments(logits.numpy(), outputs.class_queries_logits[0].numpy(), **settings)


# --- (a) against the restatement ---------------------------------------------------------------------

@pytest.mark.parametrize("case, settings", [("defaults", {}), ("overlap", dict(overlap=0.5)),
                                            ("threshold", dict(threshold=0.995)),
                                            ("none kept", dict(threshold=0.998))])
def test_tiny_eomt_equals_the_release_steps_restated(tiny_eomt, case, settings):
    names = dict(overlap="overlap_threshold", threshold="threshold")
    generator = build_mask_generator("eomt", model=str(tiny_eomt), device="cpu", stuff_classes=STUFF,
                                     **{names[k]: v for k, v in settings.items()})
    for image in (astronaut(90, 50), astronaut()):  # portrait (padded on the right), landscape (at the bottom)
        labels = generator(image)
        expected = release_label_map(tiny_eomt, image, **settings)
        assert labels.dtype == np.int32 and labels.shape == image.shape[:2]
        np.testing.assert_array_equal(labels, expected + 1)  # the release's ids shifted: uncovered 0
    values = np.unique(labels)
    assert values.tolist() == list(range(len(values)))  # 0 (unsegmented), then segments 1..n
    if case == "none kept":
        assert values.tolist() == [0]
    else:
        assert len(values) >= 3
    if case != "defaults":  # the setting is used
        defaults = build_mask_generator("eomt", model=str(tiny_eomt), device="cpu", stuff_classes=STUFF)
        assert not np.array_equal(labels, defaults(image))


def test_segment_ids_equal_the_restatement_on_synthetic_logits():
    """Many random blob-shaped masks: stuff queries merged, queries dropped by the overlap rule, unkept ones."""
    from cass.masks.eomt import segment_ids

    merged = dropped = 0
    yy, xx = np.mgrid[0:30, 0:40]
    for seed in range(30):
        rng = np.random.default_rng(seed)
        centres = rng.uniform([0, 0], [30, 40], size=(12, 2))
        radii = rng.uniform(4, 14, size=12)
        mask_logits = np.stack([4 * (1 - np.hypot(yy - cy, xx - cx) / r) for (cy, cx), r in zip(centres, radii)])
        mask_logits = (mask_logits + rng.normal(0, 0.5, mask_logits.shape)).astype(np.float32)
        class_logits = rng.normal(0, 1, (12, CLASSES + 1)).astype(np.float32)
        class_logits[np.arange(12), rng.choice([0, 3, 0, 3, 1, 2, 4, CLASSES], 12)] += 5  # stuff classes often
        got = segment_ids(torch.from_numpy(mask_logits), torch.from_numpy(class_logits), STUFF, 0.8, 0.5, 0.8)
        expected = release_segments(mask_logits, class_logits)
        np.testing.assert_array_equal(got.numpy(), expected)
        merged += not np.array_equal(release_segments(mask_logits, class_logits, stuff=()), expected)
        dropped += (release_segments(mask_logits, class_logits, overlap=0.0).max()
                    > expected.max())
    assert merged >= 5 and dropped >= 5  # the cases that matter occurred


def test_an_area_ratio_equal_to_the_overlap_threshold_is_kept():
    """The release drops a query when won / own area < overlap_thresh, so a ratio equal to it is kept
    (transformers' compute_segments keeps only ratios above it)."""
    from cass.masks.eomt import segment_ids

    mask_logits = torch.tensor([[[5.0, 5, 5, 5, -5, -5]], [[-5.0, -5, 5, 5, 5, 5]]])  # (2 queries, 1, 6)
    class_logits = torch.tensor([[4.0, 0, 0], [5.0, 0, 0]])  # class 0, scores 0.96 and 0.99: the second wins ties
    labels = segment_ids(mask_logits, class_logits, (), 0.8, 0.5, 0.5)  # the first: 2 of its 4 pixels won
    assert labels.tolist() == [[0, 0, 1, 1, 1, 1]]
    assert segment_ids(mask_logits, class_logits, (), 0.8, 0.5, 0.51).tolist() == [[-1, -1, 0, 0, 0, 0]]
    assert segment_ids(mask_logits, class_logits, (0,), 0.8, 0.5, 0.5).tolist() == [[0] * 6]  # one stuff segment
    assert segment_ids(mask_logits, class_logits, (), 0.999, 0.5, 0.5).tolist() == [[-1] * 6]  # none kept


# --- (b) against the release's own code ------------------------------------------------------------------

def _release_text(path: str) -> str:
    if (RELEASED / path).is_file():
        return (RELEASED / path).read_text()
    return subprocess.run(["git", "-C", str(RELEASED), "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


def _stand_ins(monkeypatch) -> list[str]:
    """Minimal ``lightning`` and ``torchmetrics`` modules where those are not installed: the release's
    ``eomt.training`` imports them for training, logging and metrics, none of which inference uses."""
    made = []

    class Metric(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

    modules: dict[str, dict] = {}
    if importlib.util.find_spec("lightning") is None:
        class LightningModule(torch.nn.Module):
            def log(self, *args, **kwargs):
                pass

            def save_hyperparameters(self, *args, **kwargs):
                pass

        modules |= {"lightning": dict(LightningModule=LightningModule, seed_everything=lambda *a, **k: None),
                    "lightning.fabric": {}, "lightning.fabric.utilities": dict(rank_zero_info=print)}
    if importlib.util.find_spec("torchmetrics") is None:
        modules |= {"torchmetrics": {}, "torchmetrics.classification": dict(MulticlassJaccardIndex=Metric),
                    "torchmetrics.detection": dict(PanopticQuality=Metric, MeanAveragePrecision=Metric),
                    "torchmetrics.functional": {}, "torchmetrics.functional.detection": {},
                    "torchmetrics.functional.detection._panoptic_quality_common": dict(
                        _prepocess_inputs=None, _Color=tuple, _get_color_areas=None, _calculate_iou=None)}
    for name, attributes in modules.items():
        module = ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        made.append(name)
    return made


@pytest.fixture()
def release_eomt(tmp_path, monkeypatch):
    """The release's ``eomt`` package imported from an export of the repository (removed from sys.modules
    afterwards), and the release's configuration of the COCO panoptic large 640 model."""
    if not RELEASED.exists():
        pytest.skip(f"the released CorrCLIP code is absent: set CORRCLIP_RELEASED to a checkout or git directory "
                    f"of zdk258/CorrCLIP (default {RELEASED})")
    pytest.importorskip("transformers", reason="the eomt generator needs transformers")
    pytest.importorskip("timm", reason="the release's ViT is timm's")
    pytest.importorskip("torchvision", reason="the release's generate_mask uses torchvision.tv_tensors")
    pytest.importorskip("yaml", reason="the release's configuration is YAML")
    from cass.bench.released import export_folder

    export_folder(RELEASED, tmp_path / "release" / "eomt", "CorrCLIPv1/eomt", "models/eomt.py")
    _stand_ins(monkeypatch)
    # not monkeypatch.syspath_prepend: it imports pkg_resources when loaded, which another test's stand-in may be
    monkeypatch.setattr(sys, "path", [str(tmp_path / "release"), *sys.path])
    importlib.invalidate_caches()
    for name in [n for n in sys.modules if n == "eomt" or n.startswith("eomt.")]:
        monkeypatch.delitem(sys.modules, name)
    import yaml

    config = yaml.safe_load((tmp_path / "release/eomt/configs/coco/panoptic/eomt_large_640.yaml").read_text())
    try:
        yield SimpleNamespace(config=config, load=lambda path: getattr(
            importlib.import_module(path.rpartition(".")[0]), path.rpartition(".")[2]))
    finally:
        for name in [n for n in sys.modules if n == "eomt" or n.startswith("eomt.")]:
            del sys.modules[name]


def release_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' EoMT state dict in the release's (its LightningModule's) names: the inverse of
    transformers' conversion (q, k, v projections joined into qkv, the position embeddings given a batch axis)."""
    renames = [(r"embeddings\.cls_token", "network.encoder.backbone.cls_token"),
               (r"embeddings\.register_tokens", "network.encoder.backbone.reg_token"),
               (r"embeddings\.position_embeddings\.weight", "network.encoder.backbone.pos_embed"),
               (r"embeddings\.patch_embeddings\.projection", "network.encoder.backbone.patch_embed.proj"),
               (r"layers\.(\d+)\.attention\.out_proj", r"network.encoder.backbone.blocks.\1.attn.proj"),
               (r"layers\.(\d+)\.layer_scale(\d)\.lambda1", r"network.encoder.backbone.blocks.\1.ls\2.gamma"),
               (r"layers\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)", r"network.encoder.backbone.blocks.\1.\2"),
               (r"layernorm\.", "network.encoder.backbone.norm."),
               (r"query\.weight", "network.q.weight"),
               (r"class_predictor", "network.class_head"),
               (r"upscale_block\.block\.(\d+)\.layernorm2d", r"network.upscale.\1.norm"),
               (r"upscale_block\.block\.(\d+)\.(conv1|conv2)", r"network.upscale.\1.\2"),
               (r"mask_head\.fc1", "network.mask_head.0"), (r"mask_head\.fc2", "network.mask_head.2"),
               (r"mask_head\.fc3", "network.mask_head.4"),
               (r"attn_mask_probs", "network.attn_mask_probs"), (r"criterion\.empty_weight", "criterion.empty_weight")]
    out = {}
    for key, value in hf.items():
        qkv = re.fullmatch(r"layers\.(\d+)\.attention\.q_proj\.(weight|bias)", key)
        if qkv:
            i, kind = qkv.groups()
            out[f"network.encoder.backbone.blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [hf[f"layers.{i}.attention.{p}_proj.{kind}"] for p in "qkv"])
            continue
        if re.fullmatch(r"layers\.\d+\.attention\.[kv]_proj\.(weight|bias)", key):
            continue
        for pattern, replacement in renames:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key, count=1)] = value
                break
        else:
            raise AssertionError(f"no release name for {key}")
    pos = "network.encoder.backbone.pos_embed"
    out[pos] = out[pos][None]
    return out


def build_release_model(release, folder: Path, monkeypatch, stuff_classes):
    """The release's MaskClassificationPanoptic (``get_eomt``'s construction from the YAML's class paths, with
    ``masked_attn_enabled=False``) at the tiny sizes, holding the tiny model's weights."""
    import timm
    import transformers

    model_config = release.config["model"]
    network_config = model_config["init_args"]["network"]
    vit_class = release.load(network_config["init_args"]["encoder"]["class_path"])
    # the release's ViT takes timm's DINOv2-L/14 reg4 layout by name; the tiny sizes are passed on to timm
    monkeypatch.setattr(timm, "create_model", functools.partial(
        timm.create_model, embed_dim=TINY["hidden_size"], depth=TINY["num_hidden_layers"],
        num_heads=TINY["num_attention_heads"]))
    encoder = vit_class(img_size=(SIZE, SIZE), patch_size=TINY["patch_size"], ckpt_path="not-pretrained")
    network = release.load(network_config["class_path"])(
        masked_attn_enabled=False, num_classes=CLASSES, encoder=encoder, num_q=TINY["num_queries"],
        num_blocks=TINY["num_blocks"])
    module_kwargs = {k: v for k, v in model_config["init_args"].items() if k != "network"}
    module = release.load(model_config["class_path"])(
        img_size=(SIZE, SIZE), num_classes=CLASSES, network=network, stuff_classes=list(stuff_classes),
        **module_kwargs).eval()
    weights = transformers.EomtForUniversalSegmentation.from_pretrained(folder).state_dict()
    result = module.load_state_dict(release_state_dict(weights), strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"network.encoder.pixel_mean", "network.encoder.pixel_std"}, result
    return module


def release_generate_mask():
    """``generate_mask`` of the release's CorrCLIP segmentor, as written there."""
    source = _release_text("CorrCLIPv1/corrclip_segmentor.py")
    function = next(node for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.FunctionDef) and node.name == "generate_mask")
    from torchvision import tv_tensors

    namespace = dict(np=np, Image=Image, torch=torch, F=F, tv_tensors=tv_tensors, os=os, Path=Path)
    exec(textwrap.dedent(ast.get_source_segment(source, function)), namespace)
    return namespace["generate_mask"]


def test_release_defaults(release_eomt):
    """The generator's defaults are the release's: its model, thresholds and stuff classes; the image
    processor's mean and std are the DINOv2 backbone's."""
    import timm
    from cass.masks.eomt import RELEASE_MODEL, EoMTMasks

    config = release_eomt.config
    assert RELEASE_MODEL == "tue-mps/" + config["trainer"]["logger"]["init_args"]["name"]
    parameters = inspect.signature(release_eomt.load(config["model"]["class_path"])).parameters
    generator = EoMTMasks(device="cpu")
    assert generator.threshold == parameters["mask_thresh"].default
    assert generator.overlap_threshold == parameters["overlap_thresh"].default
    assert generator.stuff_classes == tuple(config["data"]["init_args"]["stuff_classes"])
    backbone = inspect.signature(release_eomt.load(config["model"]["init_args"]["network"]["init_args"]["encoder"]
                                                   ["class_path"])).parameters["backbone_name"].default
    cfg = timm.create_model(backbone, pretrained=False, img_size=SIZE, patch_size=16, embed_dim=8, depth=1,
                            num_heads=1).default_cfg
    import transformers

    processor = transformers.EomtImageProcessor()
    assert list(processor.image_mean) == list(cfg["mean"]) and list(processor.image_std) == list(cfg["std"])
    assert processor.size == {"shortest_edge": 640, "longest_edge": 640}


def test_tiny_eomt_equals_the_release_code(tiny_eomt, release_eomt, tmp_path, monkeypatch):
    """The release's generate_mask ('eomt') on the image file and the generator on its pixels: the same map,
    with the tiny model's stuff classes (two of its segments merged into one) and without, on a landscape
    image (padded at the bottom) and a portrait one (padded on the right)."""
    generate_mask = release_generate_mask()
    maps = {}
    for stuff_classes in (STUFF, ()):
        segmentor = SimpleNamespace(mask_generator_type="eomt", device="cpu",
                                    mask_generator=build_release_model(release_eomt, tiny_eomt, monkeypatch,
                                                                       stuff_classes))
        generator = build_mask_generator("eomt", model=str(tiny_eomt), device="cpu", stuff_classes=stuff_classes)
        for name, image in (("landscape", astronaut()), ("portrait", astronaut(90, 50))):
            Image.fromarray(image).save(tmp_path / f"{name}.png")  # the release reads the image file
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # autocast("cuda") without CUDA: disabled, with a warning
                expected = generate_mask(segmentor, str(tmp_path / f"{name}.png"))
            labels = generator(image)
            np.testing.assert_array_equal(labels, expected.numpy() + 1)  # uncovered -1 -> 0, segment k -> k + 1
            maps[stuff_classes, name] = labels
    assert len(np.unique(maps[STUFF, "landscape"])) == 3 and len(np.unique(maps[(), "landscape"])) == 4
    assert len(np.unique(maps[(), "portrait"])) >= 2


# --- (c) bad input ---------------------------------------------------------------------------------------

def test_missing_model_folder_is_one_line(tmp_path):
    pytest.importorskip("transformers", reason="the eomt generator needs transformers")
    generator = build_mask_generator("eomt", model=str(tmp_path / "no-model"), device="cpu")
    one_line_error(generator.load, "cannot load EoMT", "no-model")
    one_line_error(lambda: generator(astronaut()), "cannot load EoMT", "no-model")


def test_bad_image_and_settings_are_one_line(tiny_eomt):
    generator = build_mask_generator("eomt", model=str(tiny_eomt), device="cpu")
    for bad in (astronaut()[..., 0], astronaut().astype(np.float32), np.zeros((8, 8, 4), np.uint8)):
        one_line_error(lambda: generator(bad), "(H, W, 3) uint8 RGB", error=ValueError)
    one_line_error(lambda: build_mask_generator("eomt", foo=1), "'eomt'", "'foo'", "overlap_threshold",
                   error=ConfigError)
    one_line_error(lambda: build_mask_generator("eomt", precision="bfloat16"), "bfloat16", error=ConfigError)
    one_line_error(lambda: build_mask_generator("eomt", stuff_classes=["sky"]), "stuff_classes", error=ConfigError)
    if not torch.cuda.is_available():
        one_line_error(lambda: build_mask_generator("eomt", precision="float16"), "CUDA", error=ConfigError)


def test_settings_key_follows_the_settings(tiny_eomt):
    base = build_mask_generator("eomt", model=str(tiny_eomt), device="cpu")
    assert base.settings_key().startswith("eomt ")
    assert base.settings_key() == build_mask_generator("eomt", model=str(tiny_eomt), device="cpu").settings_key()
    for change in (dict(threshold=0.7), dict(overlap_threshold=0.5), dict(mask_threshold=0.4),
                   dict(stuff_classes=STUFF), dict(model="tue-mps/coco_panoptic_eomt_large_1280")):
        other = build_mask_generator("eomt", **{"model": str(tiny_eomt), "device": "cpu", **change})
        assert other.settings_key() != base.settings_key(), change
