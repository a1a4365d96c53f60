"""CLIP trunk, DINO keys and weight loading against the libraries' own forwards."""
import math

import numpy as np

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from conftest import TINY_VFM, tiny_clip, tiny_dino, write_clip_state_dict, write_dino_checkpoint

from cass import backbones, clip_vit, constants, dino_input, vfm_keys, weights
from cass.weights import WeightsError


def test_resize_pos_embed_uses_scale_factor_call():
    pos = torch.randn(1 + 14 * 14, 8)
    assert clip_vit.resize_pos_embed(pos, (14, 14)) is pos
    out = clip_vit.resize_pos_embed(pos, (21, 28))
    grid = pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(21.1 / 14, 28.1 / 14), mode="bicubic", align_corners=False,
                             recompute_scale_factor=False).permute(0, 2, 3, 1).reshape(-1, 8)
    assert out.shape == (1 + 21 * 28, 8)
    torch.testing.assert_close(out[1:], expected)
    torch.testing.assert_close(out[0], pos[0])


def test_global_embedding_equals_open_clip_encode_image():
    model = tiny_clip()
    images = torch.randn(2, 3, 224, 224)
    tokens, grid = clip_vit.clip_trunk(model.visual, images)
    assert grid == (14, 14)
    ours = clip_vit.global_embedding(model.visual, tokens)
    torch.testing.assert_close(ours, F.normalize(model.encode_image(images), dim=-1), atol=1e-5, rtol=1e-5)


def test_reduced_block_vanilla_attention_matches_multihead_attention():
    """With plain q.k attention, the reduced block is out_proj(MHA) of the patch tokens."""
    model = tiny_clip()
    tokens, _ = clip_vit.clip_trunk(model.visual, torch.randn(1, 3, 224, 224))
    q, k, v = clip_vit.last_block_qkv(model.visual, tokens)
    attn = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    ours = clip_vit.reduced_block_output(model.visual, attn, v)
    block = model.visual.transformer.resblocks[-1]
    y = block.ln_1(tokens)[:, 1:]
    mha, _ = block.attn(y, y, y, need_weights=False)
    expected = F.normalize(model.visual.ln_post(mha) @ model.visual.proj, dim=-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_dino_keys_match_timm_forward():
    model = tiny_dino()
    captured = {}
    model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    images = torch.randn(2, 3, 224, 224)
    model.forward_features(images)
    keys, grid = vfm_keys.last_block_keys(model, images)
    b, n, _ = captured["qkv"].shape
    expected = captured["qkv"].reshape(b, n, 3, 2, 64)[:, :, 1].transpose(1, 2)[:, :, 1:]
    assert grid == (28, 28)
    torch.testing.assert_close(keys, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_dino_keys_resized_with_reference_interpolation():
    """Keys of a 336 x 336 input (42 x 42 patches of a 28 x 28 grid model) against DINO's own recipe:
    positions resized bicubically by the scale factors (h + 0.1) / 28 (DINO's interpolate_pos_encoding),
    the blocks, then the last block's k projection of the normalised tokens."""
    model = tiny_dino()
    images = torch.randn(1, 3, 336, 336)
    keys, grid = vfm_keys.last_block_keys(model, images)
    pos = model.pos_embed[0]
    patch_pos = pos[1:].reshape(1, 28, 28, -1).permute(0, 3, 1, 2)
    patch_pos = torch.nn.functional.interpolate(patch_pos, scale_factor=(42.1 / 28, 42.1 / 28), mode="bicubic",
                                                align_corners=False, recompute_scale_factor=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, 42 * 42, -1)
    x = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
    x = torch.cat([model.cls_token + pos[:1], x + patch_pos], dim=1)
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    qkv = last.attn.qkv(last.norm1(x)).reshape(1, 1 + 42 * 42, 3, 2, 64)
    want = qkv[:, 1:, 1].transpose(1, 2)  # (1, heads, patches, 64)
    assert grid == (42, 42)
    torch.testing.assert_close(keys, want, atol=1e-5, rtol=1e-5)
    # timm's own (antialiased) resampling gives other positions: the recipe matters
    timm_pos = timm.layers.resample_abs_pos_embed(model.pos_embed, [42, 42], num_prefix_tokens=1)[0, 1:]
    assert not torch.allclose(timm_pos, patch_pos[0], atol=1e-3)


def test_keys_on_clip_grid_half_rounding():
    keys = torch.randn(2, 2, 28 * 28, 64)
    out = vfm_keys.keys_on_clip_grid(keys, (28, 28), (14, 14), half_precision=True)
    assert out.shape == (2, 2, 196, 64) and out.dtype == torch.float32
    assert torch.equal(out, out.half().float())
    exact = vfm_keys.keys_on_clip_grid(keys, (28, 28), (28, 28), half_precision=False)
    torch.testing.assert_close(exact, keys)


def test_dino_inputs_reference_and_plain():
    spec = backbones.VFM_SPECS["dino_vitb8"]
    pixels = torch.randint(0, 256, (1, 3, 60, 90)).float()
    mean, std = torch.tensor(constants.CLIP_MEAN)[:, None, None], torch.tensor(constants.CLIP_STD)[:, None, None]
    crops = (pixels - mean) / std
    ref = dino_input.reference_dino_images(crops, spec)
    assert ref.shape == (1, 3, 56, 56)  # square of side min(60, 90), cropped to a multiple of 8
    plain = dino_input.plain_dino_images(crops, spec)
    expected = (pixels / 255 - torch.tensor(dino_input.IMAGENET_MEAN)[:, None, None]) / torch.tensor(
        dino_input.IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(plain, expected[..., :56, :88], atol=1e-5, rtol=1e-5)


def test_clip_state_dict_file_loads_like_in_memory(tmp_path):
    path = write_clip_state_dict(tmp_path / "clip.pt", seed=3)
    loaded = weights.load_clip(str(path))
    ref = tiny_clip(3)
    ref.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(loaded.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=1e-5)


def test_clip_jit_archive_loads(tmp_path):
    model = tiny_clip(4)
    traced = torch.jit.trace(model, (torch.randn(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)),
                             check_trace=False)
    traced.save(str(tmp_path / "clip_jit.pt"))
    loaded = weights.load_clip(str(tmp_path / "clip_jit.pt"))
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_clip_errors_are_one_line(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        weights.load_clip(str(tmp_path / "missing.pt"))
    state = tiny_clip().state_dict()
    del state["visual.ln_post.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(WeightsError) as err:
        weights.load_clip(str(tmp_path / "broken.pt"))
    assert "broken.pt" in str(err.value) and "visual.ln_post.weight" in str(err.value)
    assert "\n" not in str(err.value)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="OpenAI's format"):
        weights.load_clip(str(tmp_path / "other.pt"))


def test_public_weights_offline_error_names_file_and_setting():
    with pytest.raises(WeightsError) as err:
        weights.load_clip("ViT-B/16")
    message = str(err.value)
    assert "ViT-B-16.pt" in message and "clip_path" in message and "\n" not in message
    with pytest.raises(WeightsError, match="dino_vitbase8_pretrain.pth.*vfm_path"):
        weights.load_vfm("dino_vitb8", None, weights.build_vfm("dino_vitb8", **TINY_VFM))


@pytest.mark.parametrize("full", [False, True])
def test_dino_release_checkpoint_loads(tmp_path, full):
    path = write_dino_checkpoint(tmp_path / "dino.pth", seed=5, full=full)
    loaded = weights.load_vfm("dino_vitb8", str(path), weights.build_vfm("dino_vitb8", **TINY_VFM))
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(vfm_keys.last_block_keys(loaded, images)[0],
                               vfm_keys.last_block_keys(tiny_dino(5), images)[0])


def test_dino_mismatch_names_keys(tmp_path):
    path = write_dino_checkpoint(tmp_path / "dino.pth")
    with pytest.raises(WeightsError) as err:  # a tiny checkpoint into the full-size model
        weights.load_vfm("dino_vitb8", str(path), weights.build_vfm("dino_vitb8", depth=1))
    assert "dino.pth" in str(err.value) and "unexpected ['blocks.1." in str(err.value)


def test_dinov2_release_checkpoint_and_keys(tmp_path):
    torch.manual_seed(6)
    model = weights.build_vfm("dinov2_vitb14_reg4", **TINY_VFM)
    with torch.no_grad():
        for p in (model.cls_token, model.reg_token, model.pos_embed):
            p.normal_(std=0.5)
    state = model.state_dict()  # write it back in DINOv2's release layout
    release = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    cls_pos = torch.randn(1, 1, 128)
    release.update(register_tokens=state["reg_token"], cls_token=state["cls_token"] - cls_pos,
                   pos_embed=torch.cat([cls_pos, state["pos_embed"]], dim=1), mask_token=torch.zeros(1, 128))
    torch.save(release, tmp_path / "dinov2.pth")
    loaded = weights.load_vfm("dinov2_vitb14_reg4", str(tmp_path / "dinov2.pth"),
                              weights.build_vfm("dinov2_vitb14_reg4", **TINY_VFM))
    spec = backbones.VFM_SPECS["dinov2_vitb14_reg4"]
    crops = torch.randn(1, 3, 224, 224)
    images = dino_input.reference_dino_images(crops, spec)
    assert images.shape == (1, 3, 518, 518)
    keys, grid = vfm_keys.last_block_keys(loaded, images)
    captured = {}
    model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    model.forward_features(images)
    expected = captured["qkv"].reshape(1, 1374, 3, 2, 64)[:, :, 1].transpose(1, 2)[:, :, 5:]
    assert grid == (37, 37)
    torch.testing.assert_close(keys, expected, atol=1e-4, rtol=1e-4)


def _bilinear_matrix(size_in, size_out):
    """Rows: bilinear weights with align_corners=False (half-pixel centres, clamped at the border)."""
    w = np.zeros((size_out, size_in))
    for i in range(size_out):
        src = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), size_in - 1)
        i1 = min(i0 + 1, size_in - 1)
        frac = src - i0
        w[i, i0] += 1 - frac
        w[i, i1] += frac
    return w


@pytest.mark.parametrize("half", [False, True])
def test_keys_on_clip_grid_equal_the_bilinear_formula(half):
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(1, 2, 7 * 9, 4, generator=g)
    out = vfm_keys.keys_on_clip_grid(keys, (7, 9), (4, 5), half_precision=half)
    wh, ww = _bilinear_matrix(7, 4), _bilinear_matrix(9, 5)
    spatial = keys[0].double().transpose(-1, -2).reshape(2, 4, 7, 9).numpy()
    if half:
        spatial = spatial.astype(np.float16).astype(np.float64)
    expected = np.einsum("oy,hdyx,px->hdop", wh, spatial, ww)
    expected = torch.from_numpy(expected.reshape(2, 4, 20)).transpose(-1, -2)
    if half:
        expected = expected.half().double()
        torch.testing.assert_close(out[0].double(), expected, atol=2e-3, rtol=1e-3)  # one float16 step
        assert torch.equal(out, out.half().float())
    else:
        torch.testing.assert_close(out[0].double(), expected, atol=1e-6, rtol=1e-6)


def test_reference_dino_input_equals_the_documented_formula():
    """uint8 of 255 * (crop * (0.229, 0.224, 0.255) + ImageNet mean), PIL bicubic to the
    min-side square, cropped to a multiple of 8, ImageNet-normalised."""
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (44, 60, 3)).astype(np.float32)
    crop = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(constants.CLIP_MEAN)[:, None, None]) \
        / torch.tensor(constants.CLIP_STD)[:, None, None]
    spec = backbones.VFM_SPECS["dino_vitb8"]
    out = dino_input.reference_dino_images(crop[None], spec)[0]
    assert out.shape == (3, 40, 40)  # square of side 44, cropped to 40

    def expected(blue_std):
        stds, means = np.array([0.229, 0.224, blue_std]), np.array(dino_input.IMAGENET_MEAN)
        rebuilt = ((crop.permute(1, 2, 0).double().numpy() * stds + means) * 255).astype(np.uint8)
        resized = np.asarray(Image.fromarray(rebuilt).resize((44, 44), Image.BICUBIC)).astype(np.float64) / 255
        normalised = (resized - means) / np.array(dino_input.IMAGENET_STD)
        return torch.from_numpy(normalised.transpose(2, 0, 1)[:, :40, :40])

    reference = expected(0.255)
    level = 1 / 255 / 0.224  # one uint8 level after normalisation
    diff = (out.double() - reference).abs()
    assert diff.max() <= level + 1e-6 and (diff < 1e-5).float().mean() > 0.99  # float rounding at .0 boundaries
    # the 0.255 quirk matters: with the true blue std the blue channel differs
    assert (out[2].double() - expected(0.225)[2]).abs().mean() > 3 * level
