"""SAM for Trident: the release table, strict loading, one-line errors, and the last global block's attention.

Tiny random SAMs (:data:`cass.random_weights.TINY_SAM`: 4 blocks, global 1
and 3, heads of 32) go through segment-anything's own builder at its 1024-px
input (a 64 x 64 token grid).
"""
import copy
import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, one_line_error, synthetic_photo
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.build_sam import _build_sam
from segment_anything.modeling import ImageEncoderViT, Sam
from segment_anything.modeling.image_encoder import get_rel_pos

from cass import random_weights, weights
from cass.backbones import SAM_SPECS, SAMSpec
from cass.build import build_model
from cass.config import CASSConfig, ConfigError, PrecisionConfig, SAMConfig
from cass.precision import DTYPES
from cass.random_weights import TINY_SAM
from cass.sam_encoder import last_global_attention, last_global_index
from cass.sam_guide import SAMGuide, sam_image


def tiny_model(kind="vit_b"):
    return weights.build_sam(kind, **TINY_SAM[kind])


@pytest.fixture(scope="module")
def encoder():
    return random_weights.random_sam("vit_b", tiny=True, seed=1).image_encoder


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 1024, 1024)


def attention_input(encoder, images):
    """What the encoder's own forward hands to the last global block's ``attn`` (``norm1(x)``), and its output."""
    captured = {}
    block = encoder.blocks[last_global_index(encoder)]
    handle = block.attn.register_forward_hook(lambda m, args, out: captured.update(x=args[0], out=out))
    try:
        with torch.no_grad():
            encoder(images)
    finally:
        handle.remove()
    return captured["x"], captured["out"]


# ----------------------------------------------------------------------------- table
# segment-anything's builders (build_sam.py): the architecture each public release was trained with
REGISTRY_ARCHITECTURES = {
    "vit_b": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                  encoder_global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                  encoder_global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                  encoder_global_attn_indexes=[7, 15, 23, 31]),
}


def recorded_builds(monkeypatch, build=False):
    """The keyword arguments of every call of segment-anything's ``_build_sam`` (what the registry's
    entries call); without ``build`` the call returns a stand-in instead of building the model."""
    module = importlib.import_module("segment_anything.build_sam")  # the package's build_sam is a function
    calls, real = [], module._build_sam

    def record(**kwargs):
        calls.append(kwargs)
        return real(**kwargs) if build else torch.nn.Identity()

    monkeypatch.setattr(module, "_build_sam", record)
    return calls


def test_table_names_the_public_releases_of_the_registry(monkeypatch):
    assert {kind: spec.release_file for kind, spec in SAM_SPECS.items()} == {
        "vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}
    assert {kind: spec.url for kind, spec in SAM_SPECS.items()} == {
        "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"}
    # every architecture of the registry, under its own name ("default" is vit_h's alias, not a release)
    assert set(sam_model_registry) == set(SAM_SPECS) | {"default"}
    # build_sam(kind) is the registry's builder of that very kind (the architecture its release file fits)
    calls = recorded_builds(monkeypatch)
    for kind in ("vit_b", "vit_l", "vit_h"):
        weights.build_sam(kind)
        assert calls.pop() == dict(REGISTRY_ARCHITECTURES[kind], checkpoint=None), kind
        sam_model_registry[kind](checkpoint=None)
        assert calls.pop() == dict(REGISTRY_ARCHITECTURES[kind], checkpoint=None), kind
    assert calls == []
    with pytest.raises(ValueError) as err:
        SAMSpec("a.pth", "https://x/b.pth")
    assert str(err.value) == "url https://x/b.pth does not end in the release file a.pth"
    for unknown in ("vit_x", "default"):
        message = f"unknown SAM '{unknown}'; choose one of ['vit_b', 'vit_h', 'vit_l']"
        for call in (weights.build_sam, weights.load_sam):
            with pytest.raises(ValueError) as err:
                call(unknown)
            assert str(err.value) == message
    assert calls == []  # refused before anything is built


def test_tiny_sam_is_the_builders_model_shrunk(monkeypatch):
    assert TINY_SAM == {"vit_b": dict(embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3)),
                        "vit_l": dict(embed_dim=96, depth=4, num_heads=3, global_attn_indexes=(1, 3)),
                        "vit_h": dict(embed_dim=128, depth=4, num_heads=4, global_attn_indexes=(1, 3))}
    calls = recorded_builds(monkeypatch, build=True)
    torch.manual_seed(3)
    model = tiny_model()
    # the registry's call of vit_b with the four encoder sizes changed, nothing else
    assert calls == [dict(REGISTRY_ARCHITECTURES["vit_b"], encoder_embed_dim=64, encoder_depth=4,
                          encoder_num_heads=2, encoder_global_attn_indexes=(1, 3), checkpoint=None)]
    encoder = model.image_encoder
    assert isinstance(model, Sam) and isinstance(encoder, ImageEncoderViT)
    assert not any(module.training for module in model.modules())
    assert [block.window_size for block in encoder.blocks] == [14, 0, 14, 0]
    assert last_global_index(encoder) == 3 and encoder.img_size == 1024 and encoder.patch_embed.proj.stride == (16, 16)
    # windowed blocks: relative positions over 2 x 14 - 1 offsets; global ones over the 64-token grid
    assert [tuple(block.attn.rel_pos_h.shape) for block in encoder.blocks] == [(27, 32), (127, 32)] * 2
    assert [block.attn.num_heads for block in encoder.blocks] == [2] * 4
    # segment-anything's own preprocessing and decoding settings, as released
    assert model.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert model.pixel_std.flatten().tolist() == pytest.approx([58.395, 57.12, 57.375])
    assert (model.mask_threshold, model.image_format) == (0.0, "RGB")
    # the same builder with the same seed gives the same module, weight for weight
    torch.manual_seed(3)
    reference = _build_sam(encoder_embed_dim=64, encoder_depth=4, encoder_num_heads=2,
                           encoder_global_attn_indexes=(1, 3))
    assert repr(model) == repr(reference)
    built = model.state_dict()
    assert built.keys() == reference.state_dict().keys()
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in built.items())
    # the test suite's random SAM is that model with its zero-initialised positions drawn at random
    randomised = random_weights.random_sam("vit_b", tiny=True, seed=3).state_dict()
    positions = {"image_encoder.pos_embed"} | {f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
                                               for i in range(4) for axis in "hw"}
    assert {key for key, value in built.items() if not torch.equal(value, randomised[key])} == positions
    for key in positions:
        assert not built[key].any()
        std = 0.5 if key == "image_encoder.pos_embed" else 0.2
        assert randomised[key].std().item() == pytest.approx(std, rel=0.15), key


# ----------------------------------------------------------------------------- attention
def test_attention_equals_a_per_head_loop(encoder, images):
    """Logits (q . k) * scale + q . Rh[y_i, y_j] + q . Rw[x_i, x_j] per head, then softmax."""
    x, _ = attention_input(encoder, images)
    attn, values, grid = last_global_attention(encoder, images)
    assert grid == (64, 64)
    n = 64 * 64
    block = encoder.blocks[3].attn
    heads, width = block.num_heads, x.shape[-1]
    d = width // heads
    assert attn.shape == (2, heads, n, n) and values.shape == (2, heads, n, d)
    rows = torch.arange(n) // 64
    cols = torch.arange(n) % 64
    rel_h = get_rel_pos(64, 64, block.rel_pos_h)  # (64, 64, d): Rh[y_i, y_j]
    rel_w = get_rel_pos(64, 64, block.rel_pos_w)
    weight, bias = block.qkv.weight, block.qkv.bias
    for b in range(2):
        tokens = x[b].reshape(n, width)
        for h in range(heads):
            part = [slice(s * width + h * d, s * width + (h + 1) * d) for s in range(3)]
            q, k, v = (tokens @ weight[p].T + bias[p] for p in part)
            logits = (q @ k.T) * d ** -0.5
            qh = torch.einsum("nc,nkc->nk", q, rel_h[rows])  # (N, 64): q_i . Rh[y_i, y']
            qw = torch.einsum("nc,nkc->nk", q, rel_w[cols])
            expected = (logits + qh[:, rows] + qw[:, cols]).softmax(dim=-1)
            torch.testing.assert_close(attn[b, h], expected, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(values[b, h], v, atol=1e-5, rtol=1e-5)
            # the relative positions matter (random, as trained ones): without them the attention differs
            assert (attn[b, h] - logits.softmax(dim=-1)).abs().max() > 1e-2
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, heads, n), atol=1e-5, rtol=0)


def test_attention_and_values_are_those_of_the_encoders_own_forward(encoder, images):
    """The block's attention output (proj of attn @ v, from the hooked forward) follows from what we return."""
    x, out = attention_input(encoder, images)
    attn, values, (h, w) = last_global_attention(encoder, images)
    block = encoder.blocks[3].attn
    qkv = block.qkv(x).reshape(2, h * w, 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(values, qkv[2], atol=1e-6, rtol=1e-6)
    mixed = (attn @ values).permute(0, 2, 1, 3).reshape(2, h, w, -1)
    torch.testing.assert_close(block.proj(mixed), out, atol=1e-5, rtol=1e-5)


def test_encoder_is_unchanged_by_the_call(images):
    encoder = random_weights.random_sam("vit_b", tiny=True, seed=2).image_encoder
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    one = images[:1]
    with torch.no_grad():
        before = encoder(one)
    last_global_attention(encoder, one)
    with torch.no_grad():
        after = encoder(one)
    assert torch.equal(before, after)
    assert encoder.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in encoder.state_dict().items())
    for module in encoder.modules():
        assert "forward" not in vars(module)
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert encoder.training is False


def test_batch_equals_one_at_a_time(encoder, images):
    attn, values, _ = last_global_attention(encoder, images)
    for b in range(2):
        one_attn, one_values, _ = last_global_attention(encoder, images[b:b + 1])
        torch.testing.assert_close(attn[b:b + 1], one_attn, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(values[b:b + 1], one_values, atol=1e-6, rtol=1e-5)


def test_wrong_input_size_is_refused(encoder):
    with pytest.raises(ValueError, match="1024"):
        last_global_attention(encoder, torch.randn(1, 3, 512, 512))


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("kind", sorted(SAM_SPECS))
def test_release_file_round_trip(tmp_path, kind):
    path = random_weights.write_sam(tmp_path / SAM_SPECS[kind].release_file, kind, tiny=True, seed=3)
    stored = torch.load(path)
    assert any(k.startswith("image_encoder.") for k in stored) and any(k.startswith("mask_decoder.") for k in stored)
    loaded = weights.load_sam(kind, str(path), tiny_model(kind))
    reference = random_weights.random_sam(kind, tiny=True, seed=3).state_dict()
    assert loaded.state_dict().keys() == reference.keys() == stored.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert not loaded.training


def test_full_size_vit_b_release_file_loads(tmp_path):
    """The registry's vit_b, written in the release layout and loaded strictly (no forward: 30 s on a CPU)."""
    path = random_weights.write_sam(tmp_path / SAM_SPECS["vit_b"].release_file, "vit_b", seed=5)
    loaded = weights.load_sam("vit_b", str(path))
    assert len(loaded.image_encoder.blocks) == 12 and loaded.image_encoder.blocks[-1].attn.num_heads == 12
    assert last_global_index(loaded.image_encoder) == 11
    for key, value in random_weights.random_sam("vit_b", seed=5).state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_another_kinds_file_is_refused(tmp_path):
    path = random_weights.write_sam(tmp_path / SAM_SPECS["vit_l"].release_file, "vit_l", tiny=True)
    one_line_error(lambda: weights.load_sam("vit_b", str(path), tiny_model("vit_b")),
                   "sam_vit_l_0b3195.pth", "does not fit", "shape")


def test_file_missing_a_tensor_names_it(tmp_path):
    state = random_weights.random_sam("vit_b", tiny=True).state_dict()
    del state["image_encoder.blocks.3.attn.rel_pos_h"]
    torch.save(state, tmp_path / "broken.pth")
    one_line_error(lambda: weights.load_sam("vit_b", str(tmp_path / "broken.pth"), tiny_model()),
                   "broken.pth", "missing ['image_encoder.blocks.3.attn.rel_pos_h']")


def test_missing_file_names_it(tmp_path):
    one_line_error(lambda: weights.load_sam("vit_b", str(tmp_path / "nope.pth"), tiny_model()),
                   "SAM weights file not found", "nope.pth")


@pytest.mark.parametrize("kind", sorted(SAM_SPECS))
def test_public_sam_offline_names_file_and_setting(kind):
    one_line_error(lambda: weights.load_sam(kind, None, tiny_model(kind)),
                   SAM_SPECS[kind].release_file, SAM_SPECS[kind].url, "sam_path (--sam-path)")


def test_cached_release_is_read_without_network(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CASS_WEIGHTS_DIR", str(cache))
    random_weights.write_sam(cache / "sam_vit_b_01ec64.pth", "vit_b", tiny=True, seed=4)
    loaded = weights.load_sam("vit_b", None, tiny_model())
    expected = random_weights.random_sam("vit_b", tiny=True, seed=4).image_encoder.pos_embed
    assert torch.equal(loaded.image_encoder.pos_embed, expected)


def test_random_weights_cli_writes_the_sam_release_name(tmp_path):
    subprocess.run([sys.executable, "-m", "cass.random_weights", str(tmp_path), "--tiny", "--sam", "vit_b"],
                   check=True, capture_output=True, cwd=REPO)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ViT-B-16.pt", "dino_vitbase8_pretrain.pth", "sam_vit_b_01ec64.pth"]
    loaded = weights.load_sam("vit_b", str(tmp_path / "sam_vit_b_01ec64.pth"), tiny_model())
    assert len(loaded.image_encoder.blocks) == 4


# ---------------------------------------------------------------------------- SAM's precision (sam_precision)
def sam_dtypes(sam) -> tuple:
    """(image encoder, normalisation buffers, prompt encoder and mask decoder) dtypes of a ``Sam``."""
    decoding = {p.dtype for p in [*sam.prompt_encoder.parameters(), *sam.mask_decoder.parameters()]}
    encoder = {p.dtype for p in sam.image_encoder.parameters()}
    assert len(encoder) == 1 and len(decoding) == 1
    return encoder.pop(), sam.pixel_mean.dtype, decoding.pop()


def test_sam_precision_resolves_like_the_other_towers():
    auto = PrecisionConfig()
    assert (auto.resolve_sam("cpu"), auto.resolve_sam("cuda")) == ("fp32", "fp16")  # 'auto': Trident's release
    assert DTYPES[auto.resolve_sam("cuda")] == torch.float16 and DTYPES[auto.resolve_sam("cpu")] == torch.float32
    assert CASSConfig().to_keys()["sam_precision"] is None  # follows precision, like vfm_precision
    for precision in ("fp32", "tf32", "fp16", "bf16"):
        follows = CASSConfig.from_keys(dict(precision=precision)).precision
        assert follows.resolve_sam("cuda") == follows.resolve_sam("cpu") == precision
    own = CASSConfig.from_keys(dict(precision="fp16", sam_precision="bf16")).precision
    assert own.resolve("cuda") == ("fp16", "fp16") and own.resolve_sam("cuda") == "bf16"
    assert CASSConfig.from_keys(dict(precision="fp32", sam_precision="auto")).precision.resolve_sam("cuda") == "fp16"
    one_line_error(lambda: CASSConfig.from_keys(dict(sam_precision="fp64")), "sam_precision must be one of",
                   "'fp64'", error=ConfigError)


def test_sam_precision_reaches_sams_parameters():
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    model = build_model(clip_model=random_weights.random_clip(tiny=True), vfm="dino_vitb16",
                        vfm_model=random_weights.random_dino(tiny=True, vfm="dino_vitb16"),
                        sam_model=random_weights.random_sam("vit_b", tiny=True), classes=["cat", "dog"],
                        text_cache_dir=False, method="trident")
    sam = model.sam_guide.sam
    assert model.sam_precision() == "fp32" and sam_dtypes(sam) == (f32, f32, f32)  # CPU default: as before
    model.set_precision("fp32", sam_precision="fp16")  # as released on CUDA: the encoder (and its input) in float16
    assert model.precisions() == ("fp32", "fp32") and sam_dtypes(sam) == (f16, f16, f32)
    model.to("cpu")  # a move keeps it
    assert model.sam_guide.precision == "fp16" and sam_dtypes(sam) == (f16, f16, f32)
    model.float()  # a cast sets every tower, SAM's encoder too
    assert sam_dtypes(sam) == (f32, f32, f32)
    model.bfloat16()
    assert model.sam_precision() == "bf16" and sam_dtypes(sam) == (bf16, bf16, f32)
    model.set_precision("fp16", sam_precision="fp32")
    assert model.clip.visual.conv1.weight.dtype == f16 and sam_dtypes(sam) == (f32, f32, f32)
    built = build_model(clip_model=random_weights.random_clip(tiny=True), vfm="dino_vitb16",
                        vfm_model=random_weights.random_dino(tiny=True, vfm="dino_vitb16"),
                        sam_model=random_weights.random_sam("vit_b", tiny=True), classes=["cat"],
                        text_cache_dir=False, method="proxyclip", sam_refinement=True, sam_precision="fp16")
    assert built.precisions() == ("fp32", "fp32") and sam_dtypes(built.sam_guide.sam) == (f16, f16, f32)


@pytest.fixture(scope="module")
def lively_sam():
    sam = random_weights.random_sam("vit_b", tiny=True)
    random_weights.lively_iou_head(sam, synthetic_photo(72, 100))
    return sam


def two_region_prediction(h: int = 72, w: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities of 3 classes: class 0 on the left half, class 1 on the right half."""
    probs = torch.full((3, h, w), 0.05)
    probs[0, :, : w // 2] = probs[1, :, w // 2:] = 0.9
    return probs, probs.argmax(0)


@torch.no_grad()
def test_sam_guide_fp32_is_unchanged(lively_sam):
    """Setting float32 casts nothing: the same tensors, the same correlation and refinement."""
    rgb, (probs, labels) = synthetic_photo(72, 100), two_region_prediction()
    cfg = SAMConfig(coarse_thresh=0.05, minimal_area=4, sam_iou_thresh=-1.0)
    plain, fp32 = SAMGuide(copy.deepcopy(lively_sam), cfg), SAMGuide(copy.deepcopy(lively_sam), cfg)
    before = [p.data_ptr() for p in fp32.sam.parameters()]
    fp32.set_precision("fp32")
    assert [p.data_ptr() for p in fp32.sam.parameters()] == before
    views = [guide.set_image(rgb, 16, correlation=True) for guide in (plain, fp32)]
    assert torch.equal(views[0].weights[0], views[1].weights[0])
    refined = [guide.refine(probs, labels) for guide in (plain, fp32)]
    assert torch.equal(refined[0][0], refined[1][0]) and torch.equal(refined[0][1], refined[1][1])


@torch.no_grad()
def test_sam_guide_fp16_encoder_as_released(lively_sam):
    """A float16 encoder (CPU here): the release's casts, its embedding decoded in float32."""
    rgb, (probs, labels) = synthetic_photo(72, 100), two_region_prediction()
    guide = SAMGuide(copy.deepcopy(lively_sam), SAMConfig(coarse_thresh=0.05, minimal_area=4, sam_iou_thresh=-1.0))
    guide.set_precision("fp16")
    view = guide.set_image(rgb, 16, correlation=True)
    # the release: sam.half(), prompt encoder and mask decoder .float(), the predictor's own set_image
    released = copy.deepcopy(lively_sam).half()
    released.prompt_encoder, released.mask_decoder = released.prompt_encoder.float(), released.mask_decoder.float()
    predictor = SamPredictor(released)
    predictor.set_image(np.ascontiguousarray(sam_image(rgb, 16)))
    assert guide.predictor.features.dtype == torch.float16
    assert torch.equal(guide.predictor.features, predictor.features)
    weights = view.weights[0]
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(weights)))
    scores, new_labels = guide.refine(probs, labels)  # as released, the embedding is decoded in float32
    assert guide.predictor.features.dtype == torch.float32 and scores.dtype == torch.float32
    assert new_labels.shape == labels.shape and (scores > 0).any()


def test_sam_guide_tf32_is_plain_float32_on_the_cpu(lively_sam):
    guide = SAMGuide(copy.deepcopy(lively_sam), SAMConfig())
    guide.set_precision("tf32")
    assert sam_dtypes(guide.sam) == (torch.float32,) * 3
    before = torch.backends.cuda.matmul.allow_tf32
    with guide._tf32():
        assert torch.backends.cuda.matmul.allow_tf32 == before  # TF32 products only on CUDA
