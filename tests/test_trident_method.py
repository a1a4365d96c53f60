"""method='trident' wired into the model: each step against a direct computation, SAM's help for every
method, and Trident's one-line errors. Tiny random towers (CLIP, DINO ViT/16, SAM)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error, stages_seen, synthetic_photo

from cass import clip_vit, sam_math
from cass import windows as tiling
from cass.methods import common
from cass.build import build_model
from cass.config import CASSConfig, ConfigError
from cass.protocols import cfg_options
from cass.methods import get_method, requirements
from cass.images import ImageError, as_bgr_uint8, normalise, resize_keep_ratio
from cass.merges import splice_features
from cass.random_weights import TINY_SAM, random_clip, random_dino, random_sam, write_sam
from cass.sam_encoder import last_global_attention

CLASSES = ["sky", "grey object", "grass", "tree"]


@pytest.fixture(scope="module")
def towers():
    return random_clip(tiny=True), random_dino(tiny=True, vfm="dino_vitb16"), random_sam(tiny=True)


def trident_model(towers, **settings):
    clip, vfm, sam = towers
    keys = dict(method="trident", slide_crop=64, slide_stride=32, coarse_thresh=0.05, minimal_area=4)
    keys.update(settings)
    return build_model(clip_model=clip, vfm="dino_vitb16", vfm_model=vfm, sam_model=sam, classes=CLASSES,
                       text_cache_dir=False, **keys)


def photo_input(h: int = 72, w: int = 100, short: int = 96):
    rgb = synthetic_photo(h, w)
    return rgb, normalise(resize_keep_ratio(as_bgr_uint8(rgb), (2048, short)))


def capture_logits(model) -> dict:
    """Record the logits the model's postprocess receives (under "logits")."""
    seen, original = {}, model.postprocess

    def postprocess(logits, image, size):
        seen["logits"] = logits.clone()
        return original(logits, image, size)

    model.postprocess = postprocess
    return seen


# ---------------------------------------------------------------------------- the released structure, written out
def released_crop_block(model, crops: torch.Tensor) -> torch.Tensor:
    """``custom_attn`` of Trident's open_clip, written as released: one batch of an image's crops,
    ``torch.mean`` over the whole similarity tensor, CLIP's values resized to the VFM's grid, out_proj."""
    visual = model.clip.visual
    tokens, grid = clip_vit.clip_trunk(visual, crops)
    block = visual.transformer.resblocks[-1]
    x = block.ln_1(tokens[:, 1:])
    heads = block.attn.num_heads
    v = F.linear(x, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)[2]
    b, n, d = v.shape
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    clip_mean = torch.tensor([122.771, 116.746, 104.094])[:, None, None]
    clip_std = torch.tensor([68.501, 66.632, 70.323])[:, None, None]
    dino_in = ((crops * clip_std + clip_mean) / 255 - mean) / std
    feats, vfm_grid = common.vfm_last_features(model.vfm, dino_in)
    q_k = F.normalize(feats.transpose(1, 2), dim=1)  # b, c, m
    sim = torch.einsum("bcm,bcn->bmn", q_k, q_k)
    sim = (sim - torch.mean(sim) * 1.2) * 3.0
    sim[sim < 0] = float("-inf")
    attn = sim.softmax(-1)
    v = v.reshape(b, *grid, heads, d // heads).permute(0, 3, 4, 1, 2).reshape(b * heads, d // heads, *grid)
    v = F.interpolate(v, size=vfm_grid, mode="bilinear", align_corners=False)
    v = v.reshape(b, heads, d // heads, -1).transpose(-1, -2)  # b, heads, m, hd
    out = (attn[:, None] @ v).transpose(1, 2).reshape(b, -1, d)
    return block.attn.out_proj(out).transpose(1, 2).reshape(b, d, *vfm_grid)


def test_spliced_features_equal_the_released_structure(towers):
    model = trident_model(towers)
    _, image = photo_input()
    size = tiling.preprocess_size(*image.shape[-2:], 16, 64)
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    windows, _ = tiling.sliding_windows(*size, 64, 32, 16)
    crops = torch.stack([resized[:, y1 * 16:y2 * 16, x1 * 16:x2 * 16] for y1, x1, y2, x2 in windows.tolist()])
    per_crop = released_crop_block(model, crops)
    total = torch.zeros(per_crop.shape[1], size[0] // 16, size[1] // 16)
    count = torch.zeros(size[0] // 16, size[1] // 16)
    for k, (y1, x1, y2, x2) in enumerate(windows.tolist()):  # guidance_attn's loop
        total[:, y1:y2, x1:x2] += per_crop[k]
        count[y1:y2, x1:x2] += 1
    got = splice_features(model, image)
    torch.testing.assert_close(got, total / count, rtol=1e-4, atol=1e-5)
    assert len(windows) > 1 and (count > 1).any()  # the overlaps were averaged


def test_sam_aggregation_equals_the_encoder_path_and_the_head(towers):
    """Logits = text . normalize(proj(ln_post(W x))) with W from the encoder's last global attention,
    computed without the predictor's hook (cass.sam_encoder.last_global_attention)."""
    model = trident_model(towers, sam_refinement=False)
    rgb, image = photo_input()
    seen = capture_logits(model)
    model([image], [rgb.shape[:2]], [rgb])
    from segment_anything.utils.transforms import ResizeLongestSide
    sam = model.sam_guide.sam
    padded = sam_math.sam_input_grid(*rgb.shape[:2])
    resized_rgb = ResizeLongestSide(1024).apply_image(
        cv2.resize(rgb, (-(-rgb.shape[1] // 16) * 16, -(-rgb.shape[0] // 16) * 16)))
    x = sam.preprocess(torch.as_tensor(resized_rgb).permute(2, 0, 1)[None].float())
    attn, values, (gh, gw) = last_global_attention(sam.image_encoder, x)
    attn, values = sam_math.crop_sam_tokens(attn, values.reshape(1, values.shape[1], gh, gw, -1), padded)
    weights = sam_math.sam_correlation(attn, values, 1.2, True)
    mixed = sam_math.aggregate(splice_features(model, image)[None], weights, padded)[0]
    feats = F.normalize(model.clip.visual.ln_post(mixed) @ model.clip.visual.proj, dim=-1)
    want = (feats @ model.text_state()[0].T).T.reshape(-1, *padded)
    torch.testing.assert_close(seen["logits"], want, rtol=1e-4, atol=1e-5)


def test_trident_output_batch_determinism(towers):
    model = trident_model(towers)
    rgb1, img1 = photo_input(72, 100)
    rgb2, img2 = photo_input(90, 60)
    both = model([img1, img2], [rgb1.shape[:2], rgb2.shape[:2]], [rgb1, rgb2])
    one = model([img2], [rgb2.shape[:2]], [rgb2])[0]
    again = model([img2], [rgb2.shape[:2]], [rgb2])[0]
    assert torch.equal(both[1].labels, one.labels) and torch.equal(both[1].probs, one.probs)
    assert torch.equal(one.probs, again.probs)
    assert both[0].probs.shape == (len(CLASSES), 72, 100)


# ---------------------------------------------------------------------------- refinement wiring
class FakePredictions:
    """Stands in for SamPredictor.predict_torch: records the prompts, returns chosen IoU and masks."""

    def __init__(self, predictor, iou: float, inside: bool):
        self.predictor, self.iou, self.inside, self.calls = predictor, iou, inside, []

    def __call__(self, point_coords, point_labels, boxes, mask_input, multimask_output):
        self.calls.append(dict(points=point_coords, boxes=boxes, mask=mask_input))
        r = len(boxes)
        low = torch.full((r, 1, 256, 256), -10.0)
        if self.inside:  # a mask of the whole image for the first region of the call
            low[0] = 10.0
        return None, torch.full((r, 1), self.iou), low


def test_refinement_without_accepted_mask_keeps_the_coarse_prediction(towers, monkeypatch):
    model = trident_model(towers, sam_refinement=False)
    rgb, image = photo_input()
    coarse = model([image], [rgb.shape[:2]], [rgb])[0]
    refined_model = trident_model(towers, sam_refinement=True, sam_iou_thresh=0.8)
    fake = FakePredictions(refined_model.sam_guide.predictor, iou=0.5, inside=True)
    monkeypatch.setattr(refined_model.sam_guide.predictor, "predict_torch", fake)
    refined = refined_model([image], [rgb.shape[:2]], [rgb])[0]
    assert fake.calls, "the coarse prediction made no region"
    assert torch.equal(refined.labels, coarse.labels) and torch.equal(refined.probs, coarse.probs)


def test_refinement_prompts_and_merge(towers, monkeypatch):
    model = trident_model(towers, sam_refinement=True, sam_iou_thresh=0.8)
    rgb, image = photo_input()
    coarse_model = trident_model(towers, sam_refinement=False)
    coarse = coarse_model([image], [rgb.shape[:2]], [rgb])[0]
    fake = FakePredictions(model.sam_guide.predictor, iou=0.9, inside=True)
    monkeypatch.setattr(model.sam_guide.predictor, "predict_torch", fake)
    out = model([image], [rgb.shape[:2]], [rgb])[0]
    small_labels, small_probs = sam_math.refinement_inputs(coarse.labels, coarse.probs, 0.05)
    regions = sam_math.region_prompts(small_labels.numpy(), small_probs.numpy(), len(CLASSES), 0.05, 4)
    classes = sorted({r["class"] for r in regions})
    assert len(fake.calls) == len(classes)
    # prompts: boxes and points of the half-resolution regions in SAM's input frame
    transform = model.sam_guide.predictor.transform
    first = [r for r in regions if r["class"] == classes[0]]
    want_boxes = transform.apply_boxes_torch(torch.tensor(np.stack([r["box"] for r in first])).float(),
                                             tuple(small_labels.shape))
    torch.testing.assert_close(fake.calls[0]["boxes"], want_boxes)
    want_mask = sam_math.mask_prompt(small_probs[classes[0]].numpy(), rgb.shape[:2], 0.05, 0.005)
    # one unbatched (1, 256, 256) mask, as released (SAM's LayerNorm2d then normalises over its rows)
    assert fake.calls[0]["mask"].shape == (1, 256, 256)
    torch.testing.assert_close(fake.calls[0]["mask"][0], torch.as_tensor(want_mask))
    # every class's first region covers the image: sigmoid(10) x P[c], the largest of them wins
    scores = torch.zeros_like(coarse.probs)
    for c in classes:
        scores[c] = torch.sigmoid(torch.tensor(10.0)) * coarse.probs[c]
    torch.testing.assert_close(out.probs, scores)
    assert torch.equal(out.labels, scores.argmax(0))


# ---------------------------------------------------------------------------- SAM with the other methods
def test_sam_aggregation_of_a_logit_merging_method_mixes_its_logits(towers):
    clip, vfm, sam = towers
    keys = dict(clip_model=clip, vfm_model=vfm, vfm="dino_vitb16", classes=CLASSES, text_cache_dir=False,
                method="sclip", slide_crop=64, slide_stride=32)
    plain = build_model(**keys)
    mixed = build_model(**keys, sam_model=sam, sam_aggregation=True)
    rgb, image = photo_input()
    logits = plain.query_logits([image])[0]
    view = mixed.sam_guide.set_image(rgb, 16, correlation=True)
    want = mixed.sam_guide.aggregate(logits, view)
    h, w = view.grid
    x = F.interpolate(logits[None], (h, w), mode="bilinear", align_corners=False)[0].flatten(1)
    torch.testing.assert_close(want, (view.weights[0] @ x.T).T.reshape(-1, h, w))
    seen = capture_logits(mixed)
    mixed([image], [rgb.shape[:2]], [rgb])
    torch.testing.assert_close(seen["logits"], want)


def test_cass_with_sam_refinement_runs_and_needs_sam(towers):
    """CASS's coarse prediction refined by SAM, against a re-statement: the regions of the prediction
    CASS makes without SAM, one SAM prompt per region (box, top point, its class's mask prompt),
    the accepted masks merged and the rejected regions given their coarse scores back."""
    from segment_anything import SamPredictor

    from cass.sam_guide import sam_image

    clip, _, sam = towers
    keys = dict(clip_model=clip, vfm_model=random_dino(tiny=True), classes=CLASSES, text_cache_dir=False,
                coarse_thresh=0.05, minimal_area=4)
    assert requirements(CASSConfig.from_keys(dict(sam_refinement=True))).sam
    assert not requirements(CASSConfig()).sam
    # the random SAM predicts IoUs of about -0.02 to 0.09: 0.05 accepts some masks and rejects others
    model = build_model(**keys, sam_model=sam, sam_refinement=True, sam_iou_thresh=0.05)
    rgb, image = photo_input()
    out = model([image], [rgb.shape[:2]], [rgb])[0]
    coarse = build_model(**keys)([image], [rgb.shape[:2]])[0]  # CASS without SAM
    assert out.labels.shape == rgb.shape[:2] == (72, 100)

    small_labels, small_probs = sam_math.refinement_inputs(coarse.labels, coarse.probs, 0.05)
    assert small_labels.shape == (36, 50)
    regions = sam_math.region_prompts(small_labels.numpy(), small_probs.numpy(), len(CLASSES), 0.05, 4)
    predictor = SamPredictor(sam)
    predictor.set_image(sam_image(rgb, 16))  # 72 x 100 -> 80 x 112 -> SAM's 731 x 1024
    assert predictor.original_size == (80, 112) and predictor.input_size == (731, 1024)
    kept, kept_classes, failed = [], [], []
    for region in regions:
        c = region["class"]
        mask = sam_math.mask_prompt(small_probs[c].numpy(), (72, 100), 0.05, 0.005)
        _, iou, low_res = predictor.predict_torch(
            point_coords=predictor.transform.apply_coords_torch(torch.tensor(region["point"][None]).float(),
                                                                (36, 50))[:, None],
            point_labels=torch.ones(1, 1),
            boxes=predictor.transform.apply_boxes_torch(torch.tensor(region["box"][None]).float(), (36, 50)),
            mask_input=torch.as_tensor(mask)[None], multimask_output=False)
        if iou.item() > 0.05:
            kept.append(low_res[0])
            kept_classes.append(c)
        else:
            failed.append(torch.as_tensor(region["mask"]))
    assert kept and failed, "the check needs accepted and rejected masks"
    logits = sam.postprocess_masks(torch.stack(kept), (731, 1024), (80, 112))
    logits = F.interpolate(logits, (72, 100), mode="bilinear", align_corners=False)[:, 0]
    labels, scores = sam_math.merge_refined(logits, torch.tensor(kept_classes), coarse.probs, coarse.labels)
    labels, scores = sam_math.restore_failed(torch.stack(failed), coarse.probs, scores, labels, coarse.labels)
    torch.testing.assert_close(out.probs, scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(out.labels, labels)
    assert not torch.allclose(out.probs, coarse.probs)  # the refinement changed the prediction

    message = one_line_error(lambda: CASSModelWithout(model), "needs SAM", error=ConfigError)
    assert "sam_refinement=True" in message


def CASSModelWithout(model):
    from cass.model import CASSModel
    return CASSModel(model.clip, model.vfm, model.vocabulary, model.config, model.vfm_spec, False, sam=None)


def test_halves_aggregate_each_half_on_its_own_grid(towers):
    """Cityscapes: SAM encodes the left and the right half of the photo on their own; each half of the
    spliced grid is mixed with its own half's weights, side by side (a direct re-statement)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    model = trident_model(towers, sam_halves=True, sam_refinement=False)
    sam = model.sam_guide.sam
    rgb, image = photo_input(48, 160)
    views, aggregate = [], model.sam_guide.aggregate
    model.sam_guide.aggregate = lambda maps, view: (views.append(view), aggregate(maps, view))[1]
    seen = capture_logits(model)
    out = model([image], [rgb.shape[:2]], [rgb])[0]
    (view,) = views
    # each half (48 x 80 px) on its own grid: 614.4 x 1024 -> 614 px -> 38 tokens down, 64 across
    assert view.grids == [(38, 64), (38, 64)] and view.grid == (38, 128)
    assert out.probs.shape == (len(CLASSES), 48, 160)
    weights = []
    for half in (rgb[:, :80], rgb[:, 80:]):  # sides already multiples of 16: SAM sees the photo's own pixels
        x = sam.preprocess(torch.as_tensor(ResizeLongestSide(1024).apply_image(half)).permute(2, 0, 1)[None].float())
        attn, values, (gh, gw) = last_global_attention(sam.image_encoder, x)
        attn, values = sam_math.crop_sam_tokens(attn, values.reshape(1, values.shape[1], gh, gw, -1), (38, 64))
        weights.append(sam_math.sam_correlation(attn, values, 1.2, True)[0])
    for got, want in zip(view.weights, weights):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(weights[0], weights[1], atol=1e-3)  # two different images
    spliced = splice_features(model, image)
    assert spliced.shape[-2:] == (6, 20)  # 96 x 320 px: the halves are columns 0..9 and 10..19
    left = sam_math.aggregate(spliced[None, :, :, :10], weights[0][None], (38, 64))[0].reshape(38, 64, -1)
    right = sam_math.aggregate(spliced[None, :, :, 10:], weights[1][None], (38, 64))[0].reshape(38, 64, -1)
    mixed = torch.cat([left, right], dim=1).reshape(38 * 128, -1)
    projected = F.normalize(model.clip.visual.ln_post(mixed) @ model.clip.visual.proj, dim=-1)
    want = (projected @ model.text_state()[0].T).T.reshape(-1, 38, 128)
    torch.testing.assert_close(seen["logits"], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- the family entry and its protocol
def test_entry_and_published_protocol():
    entry = get_method("trident")
    assert entry.merge == "features" and entry.sam_aggregation and entry.sam_refinement
    assert sum(entry.published.values()) / 8 == pytest.approx(45.8, abs=0.05)
    assert sum(entry.published_with["ViT-H-14/laion2b_s32b_b79k"].values()) / 8 == pytest.approx(48.6, abs=0.05)
    city = cfg_options("trident", "cfg_city_scapes")
    assert {"model.method=trident", "model.cos_fac=3.0", "model.refine_neg_cos=False", "model.sam_halves=True",
            "model.coarse_thresh=0.1", "model.vfm=dino_vitb16"} <= set(city)
    assert "test_dataloader.dataset.pipeline.1.scale=(2048,688)" in city
    voc20 = cfg_options("trident", "cfg_voc20")
    assert "model.slide_stride=112" in voc20 and "model.cos_fac=0.0" in voc20
    assert any(o.endswith("configs/proxyclip/cls_voc20.txt") for o in voc20)
    sizes = [next(o for o in cfg_options("trident", b) if "pipeline" in o).split(",")[1].rstrip(")")
             for b in ("cfg_voc21", "cfg_context60", "cfg_coco_object", "cfg_voc20", "cfg_context59",
                       "cfg_coco_stuff164k", "cfg_city_scapes", "cfg_ade20k")]
    assert sizes == ["448", "576", "448", "336", "576", "448", "688", "576"]


# ---------------------------------------------------------------------------- one-line errors
def test_missing_and_corrupt_sam_weights(towers, tmp_path):
    clip, vfm, _ = towers
    keys = dict(clip_model=clip, vfm_model=vfm, vfm="dino_vitb16", classes=CLASSES, text_cache_dir=False,
                method="trident", sam_overrides=TINY_SAM["vit_b"])
    message = one_line_error(lambda: build_model(**keys, sam_path=str(tmp_path / "sam_vit_b_01ec64.pth")),
                             "sam_vit_b_01ec64.pth", "not found")
    assert "SAM" in message
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    one_line_error(lambda: build_model(**keys, sam_path=str(corrupt)), "corrupt.pth", "not a readable")
    good = write_sam(tmp_path / "tiny_sam.pth", tiny=True)
    assert build_model(**keys, sam_path=str(good)).sam_guide is not None
    assert build_model(**keys, sam_ckpt=str(good)).sam_guide is not None  # Trident's key


def test_public_sam_offline_names_the_flag(towers, monkeypatch, tmp_path):
    clip, vfm, _ = towers
    monkeypatch.setenv("CASS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    one_line_error(lambda: build_model(clip_model=clip, vfm_model=vfm, vfm="dino_vitb16", classes=CLASSES,
                                       method="trident"), "sam_vit_b_01ec64.pth", "--sam-path")


def test_a_vfm_trident_cannot_use(towers):
    clip, _, sam = towers
    message = one_line_error(lambda: build_model(clip_model=clip, vfm="dinov3_vitb16", classes=CLASSES,
                                                 method="trident", sam_model=sam),
                             "trident", "absolute positional embedding", error=ConfigError)
    assert "dinov3_vitb16" in message
    one_line_error(lambda: CASSConfig.from_keys(dict(method="trident", refine_text=True)), "refine_text=True",
                   error=ConfigError)


def test_too_elongated_for_sam(towers):
    model = trident_model(towers)
    rgb = np.zeros((8, 2400, 3), dtype=np.uint8)
    message = one_line_error(lambda: model.sam_guide.set_image(rgb, 16, correlation=True),
                             "2400x8", "too elongated for SAM", error=ImageError)
    assert "SAM patch" in message
    one_line_error(lambda: model.sam_guide.set_image(rgb[..., 0], 16, correlation=True), "uint8 RGB",
                   error=ImageError)


def test_sam_images_must_be_the_output_size(towers):
    model = trident_model(towers)
    rgb, image = photo_input()
    with pytest.raises(ValueError, match="output size"):
        model([image], [rgb.shape[:2]], [rgb[:-1]])


def test_trident_with_a_patch_14_clip(towers):
    """ViT-H/14's case: windows and SAM's image on multiples of 14, DINO/16's grid resized to CLIP's.

    Against the released structure written out (:func:`released_crop_block`, its 3 x 3 DINO grid of a
    56-px crop resized to CLIP's 4 x 4, guidance_attn's splice) and SAM's path with the image rounded
    up to multiples of 14 (not of SAM's 16).
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    _, vfm, sam = towers
    clip14 = random_clip(tiny=True, arch="ViT-L/14")
    model = build_model(clip_model=clip14, vfm="dino_vitb16", vfm_model=vfm, sam_model=sam, classes=CLASSES,
                        text_cache_dir=False, method="trident", slide_crop=56, slide_stride=28, sam_refinement=False)
    rgb, image = photo_input(70, 100, short=70)
    assert tuple(image.shape[-2:]) == (70, 100)
    size = tiling.preprocess_size(*image.shape[-2:], 14, 56)
    assert size == (84, 112)  # 100 -> 112; 70 x 112 / 100 = 78.4 -> 78 -> 84
    windows, grid = tiling.sliding_windows(*size, 56, 28, 14)
    assert grid == (2, 3) and windows.tolist() == [[0, 0, 4, 4], [0, 2, 4, 6], [0, 4, 4, 8],
                                                   [2, 0, 6, 4], [2, 2, 6, 6], [2, 4, 6, 8]]
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    crops = torch.stack([resized[:, y1 * 14:y2 * 14, x1 * 14:x2 * 14] for y1, x1, y2, x2 in windows.tolist()])
    per_crop = released_crop_block(model, crops)
    assert per_crop.shape[-2:] == (3, 3)  # DINO/16 on a 56-px crop
    # guidance_attn: 3 is no multiple of CLIP's 4, ratio round(3 / 4) = 1, bilinear to 4 x 4
    on_clip = F.interpolate(per_crop, size=(4, 4), mode="bilinear", align_corners=False)
    total = torch.zeros(on_clip.shape[1], 6, 8)
    count = torch.zeros(6, 8)
    for k, (y1, x1, y2, x2) in enumerate(windows.tolist()):
        total[:, y1:y2, x1:x2] += on_clip[k]
        count[y1:y2, x1:x2] += 1
    spliced = total / count
    torch.testing.assert_close(splice_features(model, image), spliced, rtol=1e-4, atol=1e-5)

    seen = capture_logits(model)
    out = model([image], [rgb.shape[:2]], [rgb])[0]
    assert out.probs.shape == (len(CLASSES), 70, 100)
    # SAM sees the original at multiples of 14: 70 x 112 -> 640 x 1024 px -> 40 x 64 valid tokens
    # (multiples of 16 would give 80 x 112 -> 731 px -> 45 rows)
    sam_rgb = ResizeLongestSide(1024).apply_image(cv2.resize(rgb, (112, 70)))
    assert sam_rgb.shape[:2] == (640, 1024)
    valid = (40, 64)
    x = sam.preprocess(torch.as_tensor(sam_rgb).permute(2, 0, 1)[None].float())
    attn, values, (gh, gw) = last_global_attention(sam.image_encoder, x)
    attn, values = sam_math.crop_sam_tokens(attn, values.reshape(1, values.shape[1], gh, gw, -1), valid)
    weights = sam_math.sam_correlation(attn, values, 1.2, True)
    mixed = sam_math.aggregate(spliced[None], weights, valid)[0]
    projected = F.normalize(model.clip.visual.ln_post(mixed) @ model.clip.visual.proj, dim=-1)
    want = (projected @ model.text_state()[0].T).T.reshape(-1, *valid)
    torch.testing.assert_close(seen["logits"], want, rtol=1e-4, atol=1e-5)


def test_trident_observes_every_stage(towers):
    from cass import stages

    model = trident_model(towers)
    rgb, image = photo_input()
    seen = set(stages_seen(lambda: model([image], [rgb.shape[:2]], [rgb])))
    assert seen == set(stages.STAGES) - {"masks", "regions"}  # CorrCLIP's: tests/test_corrclip_method.py


# ---------------------------------------------------------------------------- the original image reaches SAM
def test_segmenter_gives_sam_the_original_image(weights_dir, tmp_path, monkeypatch):
    from cass import Segmenter
    from cass.random_weights import TINY_VFM

    sam_file = write_sam(tmp_path / "sam_vit_b_01ec64.pth", tiny=True)
    segmenter = Segmenter(classes=CLASSES, clip_path=str(weights_dir / "tiny_clip.pt"),
                          vfm_path=str(weights_dir / "tiny_dino.pth"), vfm_overrides=TINY_VFM,
                          sam_path=str(sam_file), sam_overrides=TINY_SAM["vit_b"], text_cache_dir=False,
                          cfg_options={"model.method": "trident", "model.slide_crop": 64, "model.slide_stride": 32,
                                       "model.sam_refinement": False})
    seen, set_image = [], segmenter.model.sam_guide.set_image

    def spy(rgb, patch, correlation):
        seen.append(rgb.copy())
        return set_image(rgb, patch, correlation)

    monkeypatch.setattr(segmenter.model.sam_guide, "set_image", spy)
    rgb = synthetic_photo(72, 100)
    result = segmenter(rgb)
    assert len(seen) == 1 and np.array_equal(seen[0], rgb)
    assert result.labels.shape == (72, 100)


def test_the_mmseg_adapter_reads_the_original_for_sam(tmp_path):
    pytest.importorskip("mmseg")
    from mmseg.structures import SegDataSample

    from cass.mmseg.segmentor import CASSSegmentor

    rgb = synthetic_photo(30, 40)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    (image,) = CASSSegmentor.sam_images([SegDataSample(metainfo=dict(img_path=str(path)))])
    assert np.array_equal(image, rgb)
    assert CASSSegmentor.sam_images([SegDataSample(metainfo=dict(ori_shape=(30, 40)))]) is None
    with pytest.raises(FileNotFoundError, match="absent.png"):
        CASSSegmentor.sam_images([SegDataSample(metainfo=dict(img_path=str(tmp_path / "absent.png")))])


def test_the_published_resize_reaches_the_segmenter():
    """A method's published short side (cfg_options' test_dataloader resize) is the one Segmenter uses."""
    from cass.config_files import load_config, resize_scale
    from cass.benchmarks import CONFIGS_DIR

    for benchmark, short in (("cfg_voc21", 448), ("cfg_city_scapes", 688), ("cfg_voc20", 336)):
        options = dict(o.split("=", 1) for o in cfg_options("trident", benchmark))
        options = {k: eval(v) for k, v in options.items() if k.startswith("test_dataloader")}  # noqa: S307
        assert resize_scale(load_config(CONFIGS_DIR / f"{benchmark}.py", options)) == (2048, short)
    assert resize_scale(load_config(CONFIGS_DIR / "cfg_voc21.py")) == (2048, 336)  # CASS's own


def test_replacing_the_config_reaches_sams_helper(towers):
    """SAM's helper reads its own part of the settings; a new model config (the web app sets a preset's
    for each request) reaches it, so refinement uses the new thresholds."""
    model = trident_model(towers)
    assert model.sam_guide.config == model.config.sam
    model.config = model.config.replace(coarse_thresh=0.33, sam_iou_thresh=0.5, cos_fac=3.0)
    assert model.sam_guide.config is model.config.sam
    assert (model.sam_guide.config.coarse_thresh, model.sam_guide.config.sam_iou_thresh,
            model.sam_guide.config.cos_fac) == (0.33, 0.5, 3.0)
