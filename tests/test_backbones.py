"""Every backbone through the same loader: release-format files, keys, end-to-end CASS, one-line errors.

Tiny random models keep each backbone's patch size, image size, prefix tokens
and positional scheme (2 layers, width 128, 2 heads); the base-size models are
also built, written and loaded at full size once.
"""
import ast
import contextlib
import importlib
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_VFM, one_line_error
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from cass import backbones, clip_vit, dino_input, random_weights, vfm_keys, weights
from cass.backbones import CLIP_SPECS, VFM_SPECS, VFMSpec
from cass.build import build_model
from cass.config import ConfigError
from cass.methods.cass import vfm_keys as cass_vfm_keys

VFMS = sorted(VFM_SPECS)
CLIPS = sorted(CLIP_SPECS)
PUBLIC_VFMS = sorted(vfm for vfm, spec in VFM_SPECS.items() if spec.url is not None)
GATED_VFMS = sorted(vfm for vfm, spec in VFM_SPECS.items() if spec.download_page is not None)
# the CLIP each VFM pairs with at full size (as many heads)
PAIRED_CLIP = {vfm: ("ViT-B/16" if spec.num_heads == 12 else "ViT-L/14") for vfm, spec in VFM_SPECS.items()}


def tiny_vfm_file(tmp_path, vfm, seed=0, name=None):
    return random_weights.write_dino(tmp_path / (name or VFM_SPECS[vfm].release_file), tiny=True, seed=seed, vfm=vfm)


def load_tiny(vfm, path):
    return weights.load_vfm(vfm, str(path), weights.build_vfm(vfm, **TINY_VFM))


@contextlib.contextmanager
def sdpa_keys(monkeypatch):
    """The keys of every ``F.scaled_dot_product_attention`` call inside the block, in order."""
    captured = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        captured.append(k)
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    try:
        yield captured
    finally:
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)


# ----------------------------------------------------------------------------- specs and tables
@pytest.mark.parametrize("vfm", VFMS)
def test_spec_matches_the_full_size_timm_model(vfm):
    """Patch, prefix tokens and heads of each spec are those of the full-size timm model."""
    spec = VFM_SPECS[vfm]
    with torch.device("meta"):
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    assert model.patch_embed.proj.kernel_size == (spec.patch_size, spec.patch_size)
    assert model.num_prefix_tokens == spec.num_prefix_tokens
    assert model.blocks[-1].attn.num_heads == spec.num_heads
    assert (getattr(model, "rope", None) is not None) == (spec.release_format == "dinov3")
    if spec.fixed_size is not None:  # the fixed input is the grid the release was trained at
        assert model.patch_embed.grid_size == (spec.fixed_size // spec.patch_size,) * 2


def test_every_vfm_has_one_release_and_clip_heads_pair():
    for vfm in VFMS:
        assert (vfm in PUBLIC_VFMS) != (vfm in GATED_VFMS)
    assert CLIPS == ["ViT-B-16-quickgelu/metaclip_fullcc", "ViT-B/16", "ViT-H-14/laion2b_s32b_b79k",
                     "ViT-L-14-quickgelu/metaclip_fullcc", "ViT-L/14", "ViT-L/14@336px"]
    assert {arch: weights.clip_heads(arch) for arch in CLIPS} == {
        "ViT-B/16": 12, "ViT-L/14": 16, "ViT-L/14@336px": 16, "ViT-H-14/laion2b_s32b_b79k": 16,
        "ViT-B-16-quickgelu/metaclip_fullcc": 12, "ViT-L-14-quickgelu/metaclip_fullcc": 16}
    pairs = weights.head_pairings()
    assert pairs["ViT-B/16"] == pairs["ViT-B-16-quickgelu/metaclip_fullcc"] == [
        "dino_vitb8", "dino_vitb16", "dinov2_vitb14", "dinov2_vitb14_reg4", "dinov3_vitb16"]
    assert pairs["ViT-L/14"] == pairs["ViT-L/14@336px"] == pairs["ViT-H-14/laion2b_s32b_b79k"] == pairs[
        "ViT-L-14-quickgelu/metaclip_fullcc"] == ["dinov2_vitl14", "dinov2_vitl14_reg4", "dinov3_vitl16"]


def test_release_files_and_urls_come_from_the_table():
    assert {arch: (spec.open_clip_name, spec.release_file) for arch, spec in CLIP_SPECS.items()} == {
        "ViT-B/16": ("ViT-B-16", "ViT-B-16.pt"), "ViT-L/14": ("ViT-L-14", "ViT-L-14.pt"),
        "ViT-L/14@336px": ("ViT-L-14-336", "ViT-L-14-336px.pt"),
        "ViT-H-14/laion2b_s32b_b79k": ("ViT-H-14", "open_clip_pytorch_model.bin"),
        "ViT-B-16-quickgelu/metaclip_fullcc": ("ViT-B-16-quickgelu", "b16_fullcc2.5b.pt"),
        "ViT-L-14-quickgelu/metaclip_fullcc": ("ViT-L-14-quickgelu", "l14_fullcc2.5b.pt")}
    hosts = {"openai": "https://openaipublic.azureedge.net/clip/models/",
             "open_clip": "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K/",
             "metaclip": "https://dl.fbaipublicfiles.com/MMPT/metaclip/"}
    for spec in CLIP_SPECS.values():
        assert spec.url.startswith(hosts[spec.release_format])
        assert open_clip.get_model_config(spec.open_clip_name) is not None
    # every release file has its own name in the weights cache
    assert len({spec.release_file for spec in CLIP_SPECS.values()}) == len(CLIP_SPECS)
    # open_clip's own record of the release Trident uses
    from open_clip.pretrained import get_pretrained_cfg
    hub = get_pretrained_cfg("ViT-H-14", "laion2b_s32b_b79k")["hf_hub"]
    assert CLIP_SPECS["ViT-H-14/laion2b_s32b_b79k"].url.startswith(f"https://huggingface.co/{hub}")
    assert VFM_SPECS["dino_vitb8"].release_file == "dino_vitbase8_pretrain.pth"
    assert VFM_SPECS["dinov2_vitl14_reg4"].url == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth")
    assert VFM_SPECS["dinov3_vitl16"].release_file == "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    assert GATED_VFMS == ["dinov3_vitb16", "dinov3_vitl16"]
    assert {VFM_SPECS[vfm].download_page for vfm in GATED_VFMS} == {backbones.DINOV3_DOWNLOAD_PAGE}
    for spec in VFM_SPECS.values():
        assert spec.release_format in backbones.FORMAT_NAMES
        assert spec.url is None or spec.url.endswith("/" + spec.release_file)


@pytest.mark.parametrize("fields, fragment", [
    (dict(release_format="dinov4", url="https://x/f.pth"), "release_format"),
    (dict(), "either a public url or a gated download_page"),
    (dict(url="https://x/f.pth", download_page="https://x/"), "either a public url or a gated download_page"),
    (dict(url="https://x/other.pth"), "does not end in the release file"),
])
def test_vfm_spec_rejects_an_inconsistent_entry(fields, fragment):
    args = dict(timm_name="vit_base_patch8_224", patch_size=8, fixed_size=None, num_prefix_tokens=1, num_heads=12,
                release_format="dino", release_file="f.pth") | fields
    with pytest.raises(ValueError, match=fragment):
        VFMSpec(**args)


def test_backbone_table_imports_only_the_standard_library():
    """Command lines can list the backbones without torch (the table module imports nothing else)."""
    tree = ast.parse(Path(backbones.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    assert not any(isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(tree))


def test_dino_keys_is_a_deprecated_alias_of_the_same_objects(monkeypatch):
    monkeypatch.delitem(sys.modules, "cass.dino_keys", raising=False)
    with pytest.warns(DeprecationWarning, match="cass.vfm_keys"):
        old = importlib.import_module("cass.dino_keys")
    for name in ("VFM_SPECS", "VFMSpec", "vfms_with_heads"):
        assert getattr(old, name) is getattr(backbones, name)
    for name in ("embed_tokens", "last_block_keys", "keys_on_clip_grid"):
        assert getattr(old, name) is getattr(vfm_keys, name)
    from cass.dino_keys import VFM_SPECS as old_specs, last_block_keys as old_keys
    assert old_specs is VFM_SPECS and old_keys is vfm_keys.last_block_keys


# ----------------------------------------------------------------------------- CLIP
@pytest.mark.parametrize("arch", CLIPS)
def test_clip_release_file_loads_and_trunk_follows_the_patch(tmp_path, arch):
    path = random_weights.write_clip(tmp_path / CLIP_SPECS[arch].release_file, tiny=True, seed=2, arch=arch)
    loaded = weights.load_clip(str(path))
    vision = loaded.visual
    vision_cfg = open_clip.get_model_config(CLIP_SPECS[arch].open_clip_name)["vision_cfg"]
    patch, native = vision_cfg["patch_size"], vision_cfg["image_size"]
    assert (patch, native) == ((16, 224) if "B/16" in arch or "B-16" in arch else (14, 336 if "336" in arch else 224))
    assert vision.conv1.kernel_size == (patch, patch)
    assert vision.positional_embedding.shape[0] == 1 + (native // patch) ** 2
    # at the native size the trunk + last block is open_clip's encode_image
    images = torch.randn(1, 3, native, native)
    tokens, grid = clip_vit.clip_trunk(vision, images)
    assert grid == (native // patch,) * 2
    torch.testing.assert_close(clip_vit.global_embedding(vision, tokens),
                               F.normalize(loaded.encode_image(images), dim=-1), atol=1e-5, rtol=1e-5)
    # a slide crop of 224 gives a 16 x 16 grid with a 14-px patch (14 x 14 with 16 px), positions resized
    tokens, grid = clip_vit.clip_trunk(vision, torch.randn(2, 3, 224, 224))
    assert grid == (224 // patch,) * 2 and tokens.shape == (2, 1 + (224 // patch) ** 2, 128)
    q, k, v = clip_vit.last_block_qkv(vision, tokens)
    assert q.shape == (2, 2, (224 // patch) ** 2, 64)


def test_clip_large_mismatch_names_file_and_key(tmp_path):
    state = random_weights.random_clip(tiny=True, arch="ViT-L/14").state_dict()
    del state["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    torch.save(state, tmp_path / "ViT-L-14.pt")
    one_line_error(lambda: weights.load_clip(str(tmp_path / "ViT-L-14.pt")),
                   "ViT-L-14.pt", "visual.transformer.resblocks.1.mlp.c_fc.weight")


# ----------------------------------------------------------------------------- VFM release formats
@pytest.mark.parametrize("vfm", VFMS)
def test_vfm_release_file_loads_every_tensor(tmp_path, vfm):
    """The file written in the release layout gives back the random model's weights and keys."""
    path = tiny_vfm_file(tmp_path, vfm, seed=3)
    loaded = load_tiny(vfm, path)
    reference = random_weights.random_dino(tiny=True, seed=3, vfm=vfm)
    expected = reference.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        # DINOv2 with registers: the CLS position is folded into cls_token (one float rounding)
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0, msg=key)
    if VFM_SPECS[vfm].release_format == "dinov3":
        stored = torch.load(path)["rope_embed.periods"]
        assert torch.equal(loaded.rope.periods, stored) and not torch.equal(stored, reference.rope.periods)
        reference.rope.periods.copy_(stored)  # Meta's model uses the stored (bfloat16-rounded) periods
    images = torch.randn(1, 3, 112, 112)
    torch.testing.assert_close(vfm_keys.last_block_keys(loaded, images)[0],
                               vfm_keys.last_block_keys(reference, images)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vfm", ["dino_vitb16", "dinov2_vitb14_reg4", "dinov3_vitb16"])
def test_full_training_checkpoint_layout_loads(tmp_path, vfm):
    path = random_weights.write_dino(tmp_path / "full.pth", tiny=True, seed=4, full=True, vfm=vfm)
    plain = tiny_vfm_file(tmp_path, vfm, seed=4)
    for key, value in load_tiny(vfm, path).state_dict().items():
        assert torch.equal(value, load_tiny(vfm, plain).state_dict()[key])


@pytest.mark.parametrize("vfm", ["dino_vitb16", "dinov2_vitb14", "dinov3_vitb16"])
def test_full_size_release_file_loads(tmp_path, vfm):
    """Full-size base models: built, written in the release layout and loaded strictly."""
    path = random_weights.write_dino(tmp_path / VFM_SPECS[vfm].release_file, seed=5, vfm=vfm)
    loaded = weights.load_vfm(vfm, str(path))
    reference = random_weights.random_dino(seed=5, vfm=vfm)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    spec = VFM_SPECS[vfm]
    images = dino_input.reference_dino_images(torch.randn(1, 3, 224, 224), spec)
    keys, grid = vfm_keys.last_block_keys(loaded, images)
    side = (spec.fixed_size or 224) // spec.patch_size
    assert grid == (side, side) and keys.shape == (1, 12, side * side, 64)


# ----------------------------------------------------------------------------- keys
@pytest.mark.parametrize("vfm", VFMS)
def test_keys_are_the_keys_of_the_models_own_attention(monkeypatch, vfm):
    """Keys equal those timm's forward hands to scaled_dot_product_attention in the last
    block (after RoPE for DINOv3), prefix tokens dropped: at the model's own size for
    absolute positions, on a non-square grid for RoPE."""
    model = random_weights.random_dino(tiny=True, seed=6, vfm=vfm)
    spec = VFM_SPECS[vfm]
    size = (96, 160) if model.pos_embed is None else tuple(model.patch_embed.img_size)
    images = torch.randn(2, 3, *size)
    for block in model.blocks:
        block.attn.fused_attn = True
    with sdpa_keys(monkeypatch) as captured, torch.no_grad():
        model.forward_features(images)
    assert len(captured) == len(model.blocks)
    keys, grid = vfm_keys.last_block_keys(model, images)
    n = grid[0] * grid[1]
    assert grid == (size[0] // spec.patch_size, size[1] // spec.patch_size) and keys.shape == (2, 2, n, 64)
    torch.testing.assert_close(keys, captured[-1][:, :, spec.num_prefix_tokens:], atol=1e-5, rtol=1e-5)


def test_dinov3_keys_before_rope_on_request():
    model = random_weights.random_dino(tiny=True, seed=7, vfm="dinov3_vitb16")
    captured = {}
    model.blocks[-1].attn.k_norm.register_forward_hook(lambda m, i, o: captured.setdefault("k", o))
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        model.forward_features(images)
    plain, grid = vfm_keys.last_block_keys(model, images, rotary=False)
    rotated, _ = vfm_keys.last_block_keys(model, images)
    torch.testing.assert_close(plain, captured["k"][:, :, 5:], atol=1e-5, rtol=1e-5)
    # RoPE is a rotation per pair of channels: norms kept, directions changed
    torch.testing.assert_close(rotated.norm(dim=-1), plain.norm(dim=-1), atol=1e-4, rtol=1e-4)
    assert (rotated - plain).abs().max() > 0.1
    # and DINO/DINOv2 keys do not depend on the switch
    dino = random_weights.random_dino(tiny=True, vfm="dino_vitb16")
    assert torch.equal(vfm_keys.last_block_keys(dino, images, rotary=False)[0],
                       vfm_keys.last_block_keys(dino, images)[0])


def test_open_clip_release_loads_with_its_own_activation(tmp_path, monkeypatch):
    """An OpenCLIP state dict (ViT-H/14's format) is recognised by its shapes and built by open_clip with
    GELU (OpenAI's QuickGELU would change every feature); a tiny architecture stands in for ViT-H/14."""
    from open_clip import factory

    from cass.backbones import CLIPSpec
    config = {"embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 2, "width": 96, "head_width": 48,
                                              "patch_size": 14},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
    monkeypatch.setitem(factory._MODEL_CONFIGS, "tiny-openclip-test", config)
    monkeypatch.setitem(CLIP_SPECS, "tiny/test", CLIPSpec("tiny-openclip-test", "https://example.org/tiny.bin",
                                                          release_format="open_clip"))
    torch.manual_seed(0)
    release = open_clip.create_model("tiny-openclip-test", pretrained=None).eval()
    torch.save(release.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    loaded = weights.load_clip(str(tmp_path / "open_clip_pytorch_model.bin"))
    assert isinstance(loaded.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(loaded.encode_image(images), release.encode_image(images))
    tokens, _ = clip_vit.clip_trunk(loaded.visual, images)
    torch.testing.assert_close(clip_vit.global_embedding(loaded.visual, tokens),
                               F.normalize(release.encode_image(images), dim=-1), atol=1e-5, rtol=1e-5)
    assert weights.open_clip_arch(random_weights.random_clip(tiny=True).state_dict()) is None  # OpenAI's layout


# ----------------------------------------------------------------------------- end to end
def cass_from_files(tmp_path, vfm, seed=0, clip=None, **settings):
    clip = clip or PAIRED_CLIP[vfm]
    clip_file = tmp_path / CLIP_SPECS[clip].release_file
    if not clip_file.exists():
        random_weights.write_clip(clip_file, tiny=True, arch=clip)
    dino_file = tiny_vfm_file(tmp_path, vfm, seed=seed, name=f"{vfm}-{seed}.pth")
    keys = dict(global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.5, prob_thd=0.0)
    keys.update(settings)
    return build_model(clip_path=str(clip_file), vfm=vfm, vfm_path=str(dino_file), vfm_overrides=TINY_VFM,
                       classes=["sky", "cat", "dog"], text_cache_dir=False, **keys)


@pytest.mark.parametrize("vfm", VFMS)
def test_cass_end_to_end_with_every_vfm(tmp_path, vfm):
    """build_model from release files, then a forward on a small image (two slide crops)."""
    model = cass_from_files(tmp_path, vfm)
    assert model.vfm_spec == VFM_SPECS[vfm] and model.patch_size == (16 if PAIRED_CLIP[vfm] == "ViT-B/16" else 14)
    torch.manual_seed(0)
    image = torch.randn(3, 224, 300)
    pred = model([image], [(50, 60)])[0]
    assert pred.probs.shape == (3, 50, 60) and pred.labels.shape == (50, 60)
    assert torch.isfinite(pred.probs).all()
    torch.testing.assert_close(pred.probs.sum(0), torch.ones(50, 60))
    # the VFM is used: other VFM weights change the result
    other = cass_from_files(tmp_path, vfm, seed=1)
    assert not torch.allclose(other([image], [(50, 60)])[0].probs, pred.probs, atol=1e-4)


@pytest.mark.parametrize("method", ["clip", "maskclip", "sclip", "clearclip", "naclip", "proxyclip"])
def test_every_baseline_with_clip_large_and_dinov2_registers(tmp_path, method):
    """The baselines with CLIP ViT-L/14 (14-px patches); ProxyCLIP with DINOv2 + registers (the crop at its
    own size, 16 x 16 patches, register tokens dropped), upsampled to the image like CASS's."""
    model = cass_from_files(tmp_path, "dinov2_vitl14_reg4", method=method)
    assert model.patch_size == 14 and model.config.method.name == method
    torch.manual_seed(0)
    image = torch.randn(3, 224, 300)
    pred = model([image], [(50, 60)])[0]
    assert pred.probs.shape == (3, 50, 60) and torch.isfinite(pred.probs).all()
    torch.testing.assert_close(pred.probs.sum(0), torch.ones(50, 60))
    other = cass_from_files(tmp_path, "dinov2_vitl14_reg4", seed=1, method=method)
    changed = not torch.allclose(other([image], [(50, 60)])[0].probs, pred.probs, atol=1e-4)
    assert changed == (method == "proxyclip")  # only ProxyCLIP looks at the VFM


def test_backbone_and_method_through_config_options(tmp_path):
    """What the README advertises: `--cfg-options model.vfm=... model.method=...` on a benchmark config (through
    Segmenter, the demo's path) selects the backbone and the method, and segments."""
    from cass.api import Segmenter
    clip_file = random_weights.write_clip(tmp_path / "ViT-B-16.pt", tiny=True)
    dino_file = tiny_vfm_file(tmp_path, "dinov3_vitb16")
    image = (torch.rand(96, 128, 3) * 255).to(torch.uint8).numpy()
    for method in ("cass", "sclip"):
        segmenter = Segmenter(classes=["sky", "cat"], clip_path=str(clip_file), vfm_path=str(dino_file),
                              cfg_options={"model.vfm": "dinov3_vitb16", "model.method": method,
                                           **{f"model.vfm_overrides.{k}": v for k, v in TINY_VFM.items()}},
                              text_cache_dir=False)
        assert segmenter.model.vfm_spec == VFM_SPECS["dinov3_vitb16"] and segmenter.model.config.method.name == method
        result = segmenter(image)
        assert result.probs.shape == (2, 96, 128) and np.isfinite(result.probs).all()


def test_cass_end_to_end_clip_large_336(tmp_path):
    model = cass_from_files(tmp_path, "dinov3_vitl16", clip="ViT-L/14@336px", slide_crop=336, slide_stride=224)
    crops = torch.randn(1, 3, 336, 336)
    _, grid = clip_vit.clip_trunk(model.clip.visual, crops)
    assert grid == (24, 24)
    assert cass_vfm_keys(model, crops, grid).shape == (1, 2, 24 * 24, 64)
    pred = model([torch.randn(3, 336, 400)])[0]
    assert pred.probs.shape == (3, 336, 400) and torch.isfinite(pred.probs).all()


def test_cass_full_size_base_models_end_to_end(tmp_path):
    """Full-size CLIP ViT-B/16 and DINOv3 ViT-B/16 from release files, whole-image pass."""
    clip_file = random_weights.write_clip(tmp_path / "ViT-B-16.pt", seed=1)
    dino_file = random_weights.write_dino(tmp_path / VFM_SPECS["dinov3_vitb16"].release_file, seed=1,
                                          vfm="dinov3_vitb16")
    model = build_model(clip_path=str(clip_file), vfm="dinov3_vitb16", vfm_path=str(dino_file),
                        classes=["sky", "cat"], text_cache_dir=False, slide_crop=0)
    assert model.vfm.blocks[-1].attn.num_heads == 12 and len(model.vfm.blocks) == 12
    pred = model([torch.randn(3, 224, 224)])[0]
    assert pred.probs.shape == (2, 224, 224)
    torch.testing.assert_close(pred.probs.sum(0), torch.ones(224, 224))


def test_random_weights_cli_writes_release_names(tmp_path):
    assert random_weights.main([str(tmp_path), "--tiny", "--clip", "ViT-L/14", "--vfm", "dinov2_vitl14_reg4",
                                "dinov3_vitl16"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ViT-L-14.pt", "dinov2_vitl14_reg4_pretrain.pth", "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"]
    model = build_model(clip_path=str(tmp_path / "ViT-L-14.pt"), vfm="dinov3_vitl16",
                        vfm_path=str(tmp_path / "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
                        vfm_overrides=TINY_VFM, classes=["a", "b"], text_cache_dir=False)
    assert model.patch_size == 14 and model.vfm_spec.patch_size == 16


# ----------------------------------------------------------------------------- errors
def test_mismatched_heads_name_the_combinations_that_work(tmp_path):
    """A CLIP with 3 heads and a VFM with 2: ConfigError before the VFM file is read."""
    torch.manual_seed(0)
    clip = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=1, width=192, patch_size=16, image_size=224),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                quick_gelu=True)
    torch.save(clip.state_dict(), tmp_path / "clip3.pt")
    with pytest.raises(ConfigError) as err:
        build_model(clip_path=str(tmp_path / "clip3.pt"), vfm="dinov3_vitb16", vfm_path=str(tmp_path / "none.pth"),
                    vfm_overrides=TINY_VFM, classes=["a"], text_cache_dir=False)
    message = str(err.value)
    assert "\n" not in message and "3 heads and vfm 'dinov3_vitb16' 2" in message
    assert "CLIP ViT-B/16 with dino_vitb8, dino_vitb16, dinov2_vitb14, dinov2_vitb14_reg4, dinov3_vitb16" in message
    assert "CLIP ViT-L/14 with dinov2_vitl14, dinov2_vitl14_reg4, dinov3_vitl16" in message


@pytest.mark.parametrize("vfm", VFMS)
def test_missing_file_names_it(tmp_path, vfm):
    one_line_error(lambda: load_tiny(vfm, tmp_path / "nope.pth"), "weights file not found", "nope.pth")


@pytest.mark.parametrize("vfm", PUBLIC_VFMS)
def test_public_vfm_offline_names_file_and_setting(vfm):
    one_line_error(lambda: weights.load_vfm(vfm, None, weights.build_vfm(vfm, **TINY_VFM)),
                   VFM_SPECS[vfm].release_file, VFM_SPECS[vfm].url, "vfm_path (--vfm-path)")


@pytest.mark.parametrize("arch", CLIPS)
def test_public_clip_offline_names_file_and_setting(arch):
    one_line_error(lambda: weights.load_clip(arch), CLIP_SPECS[arch].release_file, "clip_path (--clip-path)")


@pytest.mark.parametrize("vfm", GATED_VFMS)
def test_gated_dinov3_names_the_page_and_setting_and_is_read_from_the_cache(tmp_path, monkeypatch, vfm):
    name, page = VFM_SPECS[vfm].release_file, VFM_SPECS[vfm].download_page
    message = one_line_error(lambda: weights.load_vfm(vfm, None, weights.build_vfm(vfm, **TINY_VFM)),
                             name, page, "vfm_path (--vfm-path)", "licence")
    assert "could not be downloaded" not in message  # gated: no download is tried
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CASS_WEIGHTS_DIR", str(cache))
    tiny_vfm_file(cache, vfm, seed=8)
    loaded = weights.load_vfm(vfm, None, weights.build_vfm(vfm, **TINY_VFM))
    assert torch.equal(loaded.reg_token, random_weights.random_dino(tiny=True, seed=8, vfm=vfm).reg_token)


@pytest.mark.parametrize("file_vfm, vfm, fragments", [
    # DINO: a ViT-B/16 file for the ViT-B/8 model (timm's filter would resample the patch embedding)
    ("dino_vitb16", "dino_vitb8", ["patch size (16, 16)", "(8, 8)"]),
    # DINOv2: registers or not
    ("dinov2_vitb14_reg4", "dinov2_vitb14", ["a DINOv2 checkpoint with 4 register tokens",
                                             "vfm for this file: dinov2_vitb14_reg4, dinov2_vitl14_reg4"]),
    ("dinov2_vitb14", "dino_vitb8", ["a DINOv2 checkpoint with 0 register tokens", "takes DINO"]),
    # DINOv3: another family's file either way
    ("dinov3_vitb16", "dinov2_vitb14_reg4", ["a DINOv3 checkpoint with 4 register tokens",
                                             "vfm for this file: dinov3_vitb16, dinov3_vitl16"]),
    ("dino_vitb16", "dinov3_vitb16", ["a DINO (facebookresearch/dino) checkpoint", "takes DINOv3"]),
])
def test_other_models_file_is_refused(tmp_path, file_vfm, vfm, fragments):
    path = tiny_vfm_file(tmp_path, file_vfm)
    one_line_error(lambda: load_tiny(vfm, path), path.name, *fragments)


def test_dinov2_grid_mismatch_is_refused(tmp_path):
    path = tiny_vfm_file(tmp_path, "dinov2_vitb14")
    model = weights.build_vfm("dinov2_vitb14", img_size=224, **TINY_VFM)
    one_line_error(lambda: weights.load_vfm("dinov2_vitb14", str(path), model),
                   path.name, "positional embedding of 1369 patches", "has 256")


@pytest.mark.parametrize("vfm, drop, fragment", [
    ("dino_vitb16", "blocks.1.attn.qkv.weight", "missing ['blocks.1.attn.qkv.weight']"),
    ("dinov2_vitl14", "blocks.0.ls1.gamma", "missing ['blocks.0.ls1.gamma']"),
    ("dinov3_vitb16", "blocks.1.ls2.gamma", "missing ['blocks.1.gamma_2']"),
    ("dinov3_vitb16", "blocks.0.attn.qkv.bias", "missing ['blocks.0.attn.q_bias', 'blocks.0.attn.v_bias']"),
])
def test_release_file_missing_a_tensor_names_it(tmp_path, vfm, drop, fragment):
    state = torch.load(tiny_vfm_file(tmp_path, vfm))
    del state[drop]
    torch.save(state, tmp_path / "broken.pth")
    one_line_error(lambda: load_tiny(vfm, tmp_path / "broken.pth"), "broken.pth", "does not fit", fragment)


def test_dinov3_release_of_another_width_is_refused(tmp_path):
    path = tiny_vfm_file(tmp_path, "dinov3_vitb16")
    model = weights.build_vfm("dinov3_vitb16", embed_dim=192, depth=2, num_heads=3)
    one_line_error(lambda: weights.load_vfm("dinov3_vitb16", str(path), model), path.name, "does not fit", "shape")


# ----------------------------------------------------------------------------- against the reference code (opt-in)
REFERENCE_REPOS = os.environ.get("CASS_VFM_REPOS")


def _meta_model(vfm):
    """The tiny model of ``vfm`` in its authors' own code (facebookresearch/dino, dinov2, dinov3)."""
    spec = VFM_SPECS[vfm]
    tiny = dict(embed_dim=128, depth=2, num_heads=2)
    if spec.release_format == "dinov3":
        from dinov3.models.vision_transformer import DinoVisionTransformer
        return DinoVisionTransformer(img_size=224, patch_size=16, pos_embed_rope_base=100,
                                     pos_embed_rope_normalize_coords="separate", pos_embed_rope_rescale_coords=2,
                                     pos_embed_rope_dtype="fp32", ffn_ratio=4, qkv_bias=True, layerscale_init=1e-5,
                                     norm_layer="layernormbf16", ffn_layer="mlp", n_storage_tokens=4,
                                     mask_k_bias=True, **tiny)
    if spec.release_format == "dinov2":
        from dinov2.layers import MemEffAttention, NestedTensorBlock
        from dinov2.models.vision_transformer import DinoVisionTransformer
        registers = spec.num_prefix_tokens - 1
        return DinoVisionTransformer(img_size=518, patch_size=14, mlp_ratio=4, init_values=1e-5, block_chunks=0,
                                     block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
                                     num_register_tokens=registers, **tiny)
    import vision_transformer  # facebookresearch/dino
    return vision_transformer.VisionTransformer(patch_size=spec.patch_size, qkv_bias=True, mlp_ratio=4,
                                                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **tiny)


@pytest.mark.skipif(not REFERENCE_REPOS, reason="set CASS_VFM_REPOS to a folder with clones of "
                                                "facebookresearch/dino, dinov2 and dinov3")
@pytest.mark.parametrize("vfm", ["dino_vitb8", "dino_vitb16", "dinov2_vitb14", "dinov2_vitb14_reg4", "dinov3_vitb16"])
def test_release_layout_and_keys_match_the_reference_code(tmp_path, monkeypatch, vfm):
    """The written files load strictly into the authors' models, and the keys equal
    the ones their last attention computes (DINOv3: after RoPE, with the stored periods)."""
    for repo in ("dino", "dinov2", "dinov3"):
        monkeypatch.syspath_prepend(os.path.join(REFERENCE_REPOS, repo))
    path = tiny_vfm_file(tmp_path, vfm, seed=9)
    meta = _meta_model(vfm).eval()
    meta.load_state_dict(torch.load(path), strict=True)
    spec = VFM_SPECS[vfm]
    size = (96, 160) if spec.release_format == "dinov3" else ((spec.fixed_size or 224),) * 2
    images = torch.randn(2, 3, *size)
    with sdpa_keys(monkeypatch) as captured, torch.no_grad():
        meta.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.append(o))
        meta.forward_features(images) if spec.release_format != "dino" else meta(images)
    keys, grid = vfm_keys.last_block_keys(load_tiny(vfm, path), images)
    if spec.release_format == "dinov3":  # the k handed to the attention, after RoPE
        expected = captured[-1]
    else:  # the k part of the last qkv projection
        qkv = next(t for t in captured if t.dim() == 3)
        expected = qkv.reshape(2, qkv.shape[1], 3, 2, 64)[:, :, 1].transpose(1, 2)
    torch.testing.assert_close(keys, expected[:, :, spec.num_prefix_tokens:], atol=1e-5, rtol=1e-5)
