"""CorrCLIP as a method of the family: its pass against a direct restatement, the vote, bad input.

The restatement computes each branch another way than :mod:`cass.methods.corrclip`:
the region tokens never change the CLS and patch tokens (they attend to no
region token), so the trunk runs unmasked and each region token is its own
attention over CLS and its region's patches, block by block; the spatial
branch averages the unmasked trunk's outputs; the region attention is
written pair by pair.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from cass import CASSConfig, CASSModel, ConfigError, Vocabulary, clip_vit
from cass.random_weights import random_clip
from cass.methods.corrclip import dino_images, vfm_query_keys, window_features
from cass.regions import PAD_LABEL, labels_on_grid, merge_regions

from conftest import one_line_error, tiny_clip, tiny_dino

CLASSES = ["sky", "cat", "dog, puppy", "grass"]


def clip_with_blocks(layers: int = 6, seed: int = 0) -> CLIP:
    """A tiny CLIP ViT-B/16 with enough blocks for the spatial branch (blocks 2..3 of 6)."""
    return random_clip(tiny=True, seed=seed, layers=layers)


def corrclip(clip=None, **keys) -> CASSModel:
    config = CASSConfig.from_keys(dict(method="corrclip", slide_crop=48, slide_stride=32, precision="fp32", **keys))
    return CASSModel(clip or clip_with_blocks(), tiny_dino(), Vocabulary.from_classes(CLASSES), config,
                     text_cache_dir=False)


def image(h: int = 64, w: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return F.interpolate(torch.rand(1, 3, 8, 12, generator=g) * 4 - 2, size=(h, w), mode="bilinear")[0]


def masks(h: int = 64, w: int = 96) -> np.ndarray:
    mask = np.zeros((h, w), np.int64)
    mask[:32, :40] = 3
    mask[32:, 50:] = 5
    mask[8:24, 56:90] = 7
    mask[40:60, 4:30] = 9
    return mask


# ---------------------------------------------------------------------------- the pass, restated
def direct_window_features(model: CASSModel, crop: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    ctx = model.method_context()
    settings, visual = ctx.settings, model.clip.visual
    blocks = visual.transformer.resblocks
    feats, vfm_grid = vfm_query_keys(model.vfm, dino_images(crop[None]))
    feats = feats[0]
    vfm_labels = merge_regions(labels_on_grid(labels, vfm_grid), feats.reshape(*vfm_grid, -1),
                               settings.region_eps, settings.region_min_samples).flatten()
    # region attention, pair by pair
    n = len(feats)
    sim = feats @ feats.T
    first = vfm_labels.min()
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            li, lj = int(vfm_labels[i]), int(vfm_labels[j])
            allowed[i, j] = (li == lj and li != first) or ((li == first or lj == first) and sim[i, j] > sim.mean())
    attn = torch.where(allowed, sim * settings.region_tau, torch.tensor(float("-inf"))).softmax(-1)
    # the unmasked trunk, its intermediate outputs kept
    x, grid = clip_vit.embed(visual, crop[None])
    outputs = []
    for block in blocks[:-1]:
        x = block(x)
        outputs.append(x)
    assert len(blocks) == 6  # the release's rule gives NUM_SPATIAL = 6 - 4: blocks 2 and 3 are averaged
    spatial = (outputs[2] + outputs[3]) / 2
    last = blocks[-1]
    dim = last.attn.embed_dim
    main = []
    for stream in (x, spatial):
        v = F.linear(last.ln_1(stream), last.attn.in_proj_weight[2 * dim:], last.attn.in_proj_bias[2 * dim:])[0, 1:]
        v = F.interpolate(v.T.reshape(1, dim, *grid), size=vfm_grid, mode="bilinear", align_corners=False)
        main.append(last.attn.out_proj(attn @ v.reshape(dim, -1).T))
    # each region token: its own attention over CLS and its region's patches, block by block
    token_labels = labels_on_grid(vfm_labels.reshape(vfm_grid), grid).flatten()
    streams = [clip_vit.embed(visual, crop[None])[0]] + outputs  # the input of each block
    semantic = torch.zeros(len(feats), dim)
    spread = labels_on_grid(token_labels.reshape(grid), vfm_grid).flatten()
    for value in torch.unique(token_labels):
        keep = torch.cat([torch.tensor([True]), token_labels == value])
        token = streams[0][:, :1]
        for index, block in enumerate(blocks):
            context = streams[index][:, keep]
            y = block.ln_1(torch.cat([token, context], dim=1))
            out, _ = torch.nn.functional.multi_head_attention_forward(
                y[:, :1].transpose(0, 1), y[:, 1:].transpose(0, 1), y[:, 1:].transpose(0, 1), dim,
                block.attn.num_heads, block.attn.in_proj_weight, block.attn.in_proj_bias, None, None, False, 0.0,
                block.attn.out_proj.weight, block.attn.out_proj.bias, training=False, need_weights=False)
            token = token + out.transpose(0, 1)
            token = token + block.mlp(block.ln_2(token))
        semantic[spread == value] = token[0, 0]
    parts = [visual.ln_post(p) for p in (main[0], main[1], semantic)]
    x = parts[0] + parts[1] * settings.spatial_weight + parts[2] * settings.semantic_weight
    return F.normalize(x @ visual.proj, dim=-1)


@pytest.mark.parametrize("padded", [False, True])
def test_window_features_equal_a_direct_restatement(padded):
    model = corrclip()
    crop, labels = image(48, 48), torch.as_tensor(masks(48, 48))
    if padded:  # a window padded as the release pads it: zeros, and the padding label
        crop, labels = F.pad(crop, (4, 4, 0, 0)), F.pad(labels, (4, 4, 0, 0), value=PAD_LABEL)
    got, grid = window_features(model.method_context(), crop, labels)
    assert grid == (crop.shape[-2] // 8, crop.shape[-1] // 8)
    torch.testing.assert_close(got, direct_window_features(model, crop, labels), atol=2e-5, rtol=1e-4)


def test_regions_change_the_features():
    """The masks matter: other regions give other features (region tokens, scope)."""
    model = corrclip()
    crop = image(48, 48)
    one, _ = window_features(model.method_context(), crop, torch.as_tensor(masks(48, 48)))
    other, _ = window_features(model.method_context(), crop, torch.zeros(48, 48, dtype=torch.int64))
    assert not torch.allclose(one, other)


# ---------------------------------------------------------------------------- the vote
def majority(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each mask value but the smallest takes its most frequent label (ties: the smallest label)."""
    out = labels.copy()
    for value in sorted(set(mask.flatten().tolist()))[1:]:
        counts = Counter(labels[mask == value].tolist())
        top = max(counts.values())
        out[mask == value] = min(c for c, k in counts.items() if k == top)
    return out


def test_corrclip_votes_each_region_to_its_majority():
    mask = masks()
    plain = corrclip(region_vote=False)([image()], region_masks=[mask])[0]
    voted = corrclip()([image()], region_masks=[mask])[0]
    torch.testing.assert_close(voted.probs, plain.probs)  # the vote changes labels only, as released
    assert np.array_equal(voted.labels.numpy(), majority(plain.labels.numpy(), mask))
    assert not np.array_equal(voted.labels.numpy(), plain.labels.numpy())


def test_unsegmented_rule_nonpositive_keeps_every_region_of_covered_masks():
    """Masks that cover the image (labels from 1): the release's rule reads the smallest as unsegmented, the
    fix ('nonpositive') merges, scopes and votes it like any other region."""
    covered = masks() + 1
    release = corrclip(region_vote=False)([image()], region_masks=[covered])[0]
    fixed = corrclip(region_vote=False, unsegmented="nonpositive")([image()], region_masks=[covered])[0]
    assert not torch.allclose(release.probs, fixed.probs)  # the pass reads the rule
    voted = corrclip(unsegmented="nonpositive")([image()], region_masks=[covered])[0]
    everywhere = majority(fixed.labels.numpy(), np.where(covered == covered.min(), 0, covered))
    everywhere[covered == covered.min()] = majority(fixed.labels.numpy(), (covered == covered.min()).astype(int))[
        covered == covered.min()]
    assert np.array_equal(voted.labels.numpy(), everywhere)
    for value in np.unique(covered):
        assert len(np.unique(voted.labels.numpy()[covered == value])) == 1


def test_an_image_without_masks_runs_as_released():
    """No mask passed the generator's thresholds (all 0, what SAM2's stacking gives): one unsegmented region;
    CorrCLIP runs on (no merge, every token attends where the VFM similarity beats the mean, one region
    token), finite, and the vote changes nothing."""
    empty = np.zeros((64, 96), np.int64)
    plain = corrclip(region_vote=False)([image()], region_masks=[empty])[0]
    voted = corrclip()([image()], region_masks=[empty])[0]
    assert torch.isfinite(plain.probs).all()
    assert torch.equal(voted.labels, plain.labels) and torch.equal(voted.probs, plain.probs)


def test_any_method_may_vote_with_given_masks():
    model = CASSModel(tiny_clip(), None, Vocabulary.from_classes(CLASSES),
                      CASSConfig.from_keys(dict(method="sclip", slide_crop=0, precision="fp32", region_vote=True)),
                      text_cache_dir=False)
    plain = CASSModel(tiny_clip(), None, Vocabulary.from_classes(CLASSES),
                      CASSConfig.from_keys(dict(method="sclip", slide_crop=0, precision="fp32")),
                      text_cache_dir=False)([image()])[0]
    voted = model([image()], region_masks=[masks()])[0]
    assert np.array_equal(voted.labels.numpy(), majority(plain.labels.numpy(), masks()))


# ---------------------------------------------------------------------------- bad input
def test_bad_region_input_is_a_one_line_error():
    model = corrclip()
    one_line_error(lambda: model([image()]), "uses region masks", "mask_generator", error=ConfigError)
    one_line_error(lambda: model([image()], region_masks=[masks(32, 96)]), "region mask of shape (32, 96)",
                   error=ValueError)
    one_line_error(lambda: model([image()], region_masks=[masks().astype(float)]), "integer labels",
                   error=ValueError)
    one_line_error(lambda: corrclip(clip=tiny_clip())([image()], region_masks=[masks()]), "at least 5",
                   error=ConfigError)
    one_line_error(lambda: CASSConfig.from_keys(dict(method="corrclip", region_tau=0)), "region_tau must be > 0",
                   error=ConfigError)
    one_line_error(lambda: CASSConfig.from_keys(dict(method="corrclip", refine_text=True)), "refine_text=True",
                   error=ConfigError)


def test_corrclip_observes_its_stages(tmp_path):
    """Masks made by a generator and the region steps are stages of their own (benchmark.py's table)."""
    from cass import stages

    from conftest import stages_seen

    model = corrclip()
    model.mask_generator = lambda rgb, path: masks(*rgb.shape[:2])
    seen = set(stages_seen(lambda: model([image()])))
    assert seen == set(stages.STAGES) - {"sam", "aggregate", "refine", "spectral"}


def test_masks_from_the_configured_files_generator(tmp_path):
    """mask_generator='files': each image's masks are read from mask_dir by its name (the release's .npz)."""
    from cass.build import build_model
    from cass.masks import write_npz

    write_npz(tmp_path / "photo.npz", masks())
    keys = dict(method="corrclip", slide_crop=48, slide_stride=32, precision="fp32", mask_generator="files",
                mask_dir=str(tmp_path))
    model = build_model(clip_model=clip_with_blocks(), vfm_model=tiny_dino(), classes=CLASSES, text_cache_dir=False,
                        **keys)
    assert model.sees_originals
    read = model([image()], paths=[str(tmp_path / "images" / "photo.jpg")])[0]
    given = corrclip()([image()], region_masks=[masks()])[0]
    assert torch.equal(read.labels, given.labels) and torch.equal(read.probs, given.probs)
    one_line_error(lambda: model([image()], paths=[str(tmp_path / "other.jpg")]), "other", error=Exception)
    one_line_error(lambda: build_model(clip_model=clip_with_blocks(), vfm_model=tiny_dino(), classes=CLASSES,
                                       text_cache_dir=False, **{**keys, "mask_dir": None}), "set mask_dir",
                   error=ConfigError)
