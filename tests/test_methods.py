"""The training-free family as options of CASSModel: each last block against a direct formula."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VFM, tiny_clip, tiny_dino

from cass import clip_vit
from cass.methods import common
from cass.backbones import VFM_SPECS
from cass.config import CASSConfig, ConfigError
from cass.methods import get_method, method_names
from cass.dino_input import plain_dino_images
from cass.model import CASSModel
from cass.spectral import gaussian_bias
from cass.text import Vocabulary
from cass.weights import build_vfm

CLASSES = ["background, sky", "cat", "dog, puppy", "grass"]
CASS_KEYS = dict(global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.5, precision="fp32")


def make(method=None, clip=None, dino=None, **keys):
    settings = {**CASS_KEYS, **keys, **({} if method is None else dict(method=method))}
    return CASSModel(clip or tiny_clip(), dino or tiny_dino(), Vocabulary.from_classes(CLASSES),
                     CASSConfig.from_keys(settings), text_cache_dir=False)


def crops(count=2, h=64, w=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 3, h // 8, w // 8, generator=g) * 4 - 2
    return F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)


def trunk(model, x):
    return clip_vit.clip_trunk(model.clip.visual, x)


def softmax_rows(logits):
    """Explicit softmax over the last axis."""
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def per_head_qkv(block, tokens):
    """q, k, v per head with explicit weight slices: lists over heads of (B, T, d)."""
    dim = tokens.shape[-1]
    heads = block.attn.num_heads
    d = dim // heads
    y = F.layer_norm(tokens, (dim,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    out = []
    for part in range(3):
        full = y @ w[part * dim:(part + 1) * dim].T + b[part * dim:(part + 1) * dim]
        out.append([full[..., h * d:(h + 1) * d] for h in range(heads)])
    return out


def tail(visual, mixed_heads, tokens=None, prefix=1):
    """out_proj of the concatenated heads, optional residual + MLP, ln_post, proj, normalise."""
    block = visual.transformer.resblocks[-1]
    x = torch.cat(mixed_heads, dim=-1) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    if tokens is not None:
        x = tokens + x
        x = x + block.mlp(block.ln_2(x))
    x = visual.ln_post(x[:, prefix:]) @ visual.proj
    return x / x.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------- equations
@pytest.fixture(scope="module")
def clip_model():
    return tiny_clip(3).eval()


@pytest.fixture(scope="module")
def tokens_grid(clip_model):
    with torch.no_grad():
        return clip_vit.clip_trunk(clip_model.visual, crops(2, 64, 80, seed=1))


def test_block_qkv_are_the_heads_of_the_in_projection(clip_model, tokens_grid):
    tokens, _ = tokens_grid
    block = clip_model.visual.transformer.resblocks[-1]
    q, k, v = common.block_qkv(block, tokens)
    qs, ks, vs = per_head_qkv(block, tokens)
    for h in range(block.attn.num_heads):
        for got, want in ((q, qs), (k, ks), (v, vs)):
            torch.testing.assert_close(got[:, h], want[h], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_clip_is_the_unmodified_block(clip_model, tokens_grid):
    """vanilla attention + residual + MLP through the shared tail == open_clip's own block."""
    tokens, _ = tokens_grid
    visual = clip_model.visual
    q, k, v = common.block_qkv(visual.transformer.resblocks[-1], tokens)
    feats = common.last_block_features(visual, common.attend(common.vanilla_attention(q, k), v), tokens, 1)
    x = visual.transformer.resblocks[-1](tokens)
    want = F.normalize(visual.ln_post(x[:, 1:]) @ visual.proj, dim=-1)
    torch.testing.assert_close(feats, want, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_maskclip_is_the_value_path_with_residual_and_ffn(clip_model, tokens_grid):
    tokens, _ = tokens_grid
    visual = clip_model.visual
    block = visual.transformer.resblocks[-1]
    _, _, vs = per_head_qkv(block, tokens)
    want = tail(visual, vs, tokens)  # x + out_proj(v); x + mlp(ln_2 x)
    model = make("maskclip", clip=clip_model)
    feats, grid = model.patch_features(None, tokens, tokens_grid[1])
    torch.testing.assert_close(feats, want, rtol=1e-4, atol=1e-5)
    reduced, _ = make("maskclip", clip=clip_model, residual=False).patch_features(None, tokens, grid)
    torch.testing.assert_close(reduced, tail(visual, vs), rtol=1e-4, atol=1e-5)  # ClearCLIP's MaskCLIP


def test_correlative_attention_per_head():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 7, 5, generator=g), torch.randn(2, 3, 7, 5, generator=g)
    got = common.correlative_attention(q, k)
    for b in range(2):
        for h in range(3):
            qq = q[b, h] @ q[b, h].T / math.sqrt(5)
            kk = k[b, h] @ k[b, h].T / math.sqrt(5)
            torch.testing.assert_close(got[b, h], softmax_rows(qq) + softmax_rows(kk))
    torch.testing.assert_close(got.sum(-1), torch.full((2, 3, 7), 2.0))  # SCLIP does not renormalise


def test_neighbourhood_bias_is_a_gaussian_with_a_free_cls():
    grid, sigma = (3, 4), 1.5
    patch = torch.zeros(12, 12)
    for i in range(12):
        for j in range(12):
            (ri, ci), (rj, cj) = divmod(i, 4), divmod(j, 4)
            patch[i, j] = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * sigma**2))
    bias = common.with_prefix(gaussian_bias(grid, sigma), 1)
    assert bias.shape == (13, 13) and not bias[0].any() and not bias[:, 0].any()
    torch.testing.assert_close(bias[1:, 1:], patch)


@torch.no_grad()
@pytest.mark.parametrize("method", ["sclip", "clearclip", "naclip"])
def test_attention_methods_against_per_head_formulas(method, clip_model, tokens_grid):
    """The model's features for each attention method == its equation written per head."""
    tokens, grid = tokens_grid
    visual = clip_model.visual
    qs, ks, vs = per_head_qkv(visual.transformer.resblocks[-1], tokens)
    d = qs[0].shape[-1]
    n = grid[0] * grid[1]
    sigma = 2.0
    pos = torch.tensor([divmod(i, grid[1]) for i in range(n)], dtype=torch.float32)
    gauss = torch.exp(-((pos[:, None] - pos[None]) ** 2).sum(-1) / (2 * sigma**2))
    bias = torch.zeros(n + 1, n + 1)
    bias[1:, 1:] = gauss
    mixed = []
    for q, k, v in zip(qs, ks, vs):
        qq, kk = q @ q.transpose(1, 2) / math.sqrt(d), k @ k.transpose(1, 2) / math.sqrt(d)
        if method == "sclip":
            attn = softmax_rows(qq) + softmax_rows(kk)
        elif method == "clearclip":
            attn = softmax_rows(qq)
        else:
            attn = softmax_rows(kk + bias)
        mixed.append(attn @ v)
    want = tail(visual, mixed, tokens if method == "sclip" else None)
    model = make(method, clip=clip_model, gaussian_std=sigma)
    feats, out_grid = model.patch_features(None, tokens, grid)
    assert out_grid == grid
    torch.testing.assert_close(feats, want, rtol=1e-4, atol=1e-5)


def test_proxy_attention_against_row_formula():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 9, 6, generator=g)
    beta, gamma = 1.2, 3.0
    got = common.proxy_attention(feats, beta, gamma)
    for b in range(2):
        f = feats[b] / feats[b].norm(dim=-1, keepdim=True)
        sim = f @ f.T
        logits = (sim - sim.mean() * beta) * gamma
        for i in range(9):
            keep = logits[i] >= 0
            row = torch.zeros(9)
            row[keep] = torch.exp(logits[i][keep]) / torch.exp(logits[i][keep]).sum()
            torch.testing.assert_close(got[b, i], row)
    assert (got == 0).any()  # the masking removed some pairs
    # a constant image: every similarity is 1 = its mean; the reference gives NaN, here each token keeps itself
    flat = common.proxy_attention(torch.ones(1, 5, 6), beta, gamma)
    torch.testing.assert_close(flat[0], torch.eye(5))


def _replaced_proxy_attention(feats, beta, gamma, dims):
    """The formula of the two functions ``proxy_attention`` replaced (ProxyCLIP's, Trident's per-image crops)."""
    f = F.normalize(feats.float(), dim=-1)
    sim = f @ f.transpose(-1, -2)
    logits = (sim - sim.mean(dim=dims, keepdim=True) * beta) * gamma
    masked = logits.masked_fill(logits < 0, -torch.inf)
    empty = torch.isinf(masked).all(-1, keepdim=True)
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    return torch.where(empty & eye, torch.zeros_like(masked), masked).softmax(-1)


@pytest.mark.parametrize("shared", [False, True])
def test_proxy_attention_mean_per_crop_or_shared_by_the_crops(shared):
    """``mean_dims=(-2, -1)``: each crop's own mean (ProxyCLIP); ``(-3, -2, -1)``: one mean over the crops of an
    image (Trident), against a loop over the crops; and bit for bit the former two functions as they were
    called (Trident's on a batch of one image, mean over its axes 1, 2, 3)."""
    g = torch.Generator().manual_seed(21)
    feats = torch.randn(3, 7, 5, generator=g) + torch.arange(3.0)[:, None, None]  # 3 crops, unlike means
    beta, gamma = 0.9, 2.5
    mean_dims = (-3, -2, -1) if shared else (-2, -1)
    got = common.proxy_attention(feats, beta, gamma, mean_dims=mean_dims)
    assert got.shape == (3, 7, 7)
    sims = [(f / f.norm(dim=-1, keepdim=True)) @ (f / f.norm(dim=-1, keepdim=True)).T for f in feats]
    shared_mean = sum(float(s.sum()) for s in sims) / (3 * 49)
    for k, sim in enumerate(sims):
        mean = shared_mean if shared else float(sim.mean())
        for i in range(7):
            logits = (sim[i] - mean * beta) * gamma
            keep = logits >= 0
            row = torch.zeros(7)
            row[keep] = torch.exp(logits[keep]) / torch.exp(logits[keep]).sum()
            torch.testing.assert_close(got[k, i], row)
    other = common.proxy_attention(feats, beta, gamma, mean_dims=(-2, -1) if shared else (-3, -2, -1))
    assert not torch.allclose(got, other)  # the two means differ
    want = (_replaced_proxy_attention(feats[None], beta, gamma, (1, 2, 3))[0] if shared
            else _replaced_proxy_attention(feats, beta, gamma, (-2, -1)))
    assert torch.equal(got, want)


def test_values_on_grid_is_a_bilinear_resize_per_head():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(2, 3, 12, 5, generator=g)
    got = common.values_on_grid(v, (3, 4), (6, 8))
    assert got.shape == (2, 3, 48, 5)
    for b in range(2):
        for h in range(3):
            image = v[b, h].T.reshape(1, 5, 3, 4)
            want = F.interpolate(image, size=(6, 8), mode="bilinear", align_corners=False)[0].reshape(5, 48).T
            torch.testing.assert_close(got[b, h], want)
    assert common.values_on_grid(v, (3, 4), (3, 4)) is v


@torch.no_grad()
def test_vfm_last_features_are_the_normed_last_layer():
    dino = tiny_dino(5).eval()
    images = torch.randn(2, 3, 224, 224)  # timm's own size: no positional resize
    feats, grid = common.vfm_last_features(dino, images)
    assert grid == (28, 28)
    torch.testing.assert_close(feats, dino.forward_features(images)[:, 1:], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_proxyclip_in_the_model_against_its_formula(clip_model):
    dino = tiny_dino(6).eval()
    model = make("proxyclip", clip=clip_model, dino=dino, proxy_beta=0.8, proxy_gamma=2.0)
    x = crops(2, 64, 80, seed=2)
    tokens, grid = trunk(model, x)
    feats, vfm_grid = model.patch_features(x, tokens, grid)
    assert grid == (4, 5) and vfm_grid == (8, 10)
    vfm, _ = common.vfm_last_features(dino, plain_dino_images(x, VFM_SPECS["dino_vitb8"]))
    attn = common.proxy_attention(vfm, 0.8, 2.0)
    _, _, vs = per_head_qkv(clip_model.visual.transformer.resblocks[-1], tokens)
    mixed = []
    for v in vs:  # CLIP values of the patches, resized to the VFM grid, mixed by the shared attention
        image = v[:, 1:].transpose(1, 2).reshape(2, -1, *grid)
        resized = F.interpolate(image, size=vfm_grid, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        mixed.append(attn @ resized)
    torch.testing.assert_close(feats, tail(clip_model.visual, mixed, prefix=0), rtol=1e-4, atol=1e-5)
    logits = model.crop_logits(x, None)
    assert logits.shape == (2, len(model.vocabulary.queries), 64, 80)


def test_drop_small_classes_zeroes_small_regions():
    probs = torch.zeros(4, 10, 10)
    probs[0] = 0.4
    probs[1, :, :6] = 0.9  # 60 pixels
    probs[2, :, 6:] = 0.8  # 38 pixels
    probs[3, 0, 6:8] = 0.95  # 2 pixels: 2 / 100 non-background pixels
    out = common.drop_small_classes(probs, 0.1)
    assert torch.equal(out[:3], probs[:3]) and not out[3].any()
    assert torch.equal(common.drop_small_classes(probs, 0.01), probs)


# ---------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def image():
    return crops(1, 224, 300, seed=7)[0]


@torch.no_grad()
def test_cass_default_is_unchanged(image):
    clip, dino = tiny_clip(), tiny_dino()
    default = CASSModel(clip, dino, Vocabulary.from_classes(CLASSES), CASSConfig.from_keys(CASS_KEYS),
                        text_cache_dir=False)([image])[0]
    explicit = make("cass", clip=clip, dino=dino)([image])[0]
    assert torch.equal(default.probs, explicit.probs) and torch.equal(default.labels, explicit.labels)
    keys = CASSConfig().to_keys()
    assert (keys["method"], keys["residual"], keys["refine_text"], keys["area_thd"]) == ("cass", None, None, 0.0)
    assert CASSConfig.from_keys(keys) == CASSConfig()
    # without area_thd the filter is skipped: probabilities are the softmax of the logits, unchanged
    assert torch.equal(make(clip=clip, dino=dino, area_thd=0.0)([image])[0].probs, default.probs)


@torch.no_grad()
@pytest.mark.parametrize("method", [m for m in method_names()[1:] if get_method(m).merge == "logits"])
def test_baselines_use_plain_text_embeddings(method, image):  # Trident's merge: tests/test_trident_method.py
    """Without refinement a crop's logits are F . t, upsampled; every method gives another output."""
    model = make(method)
    x = image[None, :, :224, :224]
    text_feats, _ = model.text_state()
    tokens, grid = trunk(model, x)
    feats, out_grid = model.patch_features(x, tokens, grid)
    want = F.interpolate((feats @ text_feats.T).transpose(1, 2).reshape(1, -1, *out_grid), size=(224, 224),
                         mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.crop_logits(x, None), want)
    assert model.vfm is None if method != "proxyclip" else model.vfm is not None
    others = {m: make(m)([image])[0].probs for m in ("cass", "clip")}
    probs = model([image])[0].probs
    assert torch.isfinite(probs).all()
    for other, value in others.items():
        if other != method:
            assert not torch.allclose(probs, value), other


@torch.no_grad()
def test_baseline_options(image):
    base = make("sclip")([image])[0].probs
    # CASS-only settings do not reach a baseline
    assert torch.equal(make("sclip", attn_strategy="sequential", low_rank=4)([image])[0].probs, base)
    # CASS's text refinement on a baseline, and the residual switch, change it
    assert not torch.allclose(make("sclip", refine_text=True)([image])[0].probs, base)
    assert not torch.allclose(make("sclip", residual=False)([image])[0].probs, base)


def test_bad_method_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^method must be one of .*'proxyclip', 'trident', 'corrclip'\), got 'dino'$"):
        CASSConfig.from_keys(dict(method="dino"))
    with pytest.raises(ConfigError, match="unknown model setting 'methd' \\(did you mean 'method'\\?\\)"):
        CASSConfig.from_keys(dict(methd="sclip"))
    with pytest.raises(ConfigError, match="method 'cass' has no residual variant"):
        CASSConfig.from_keys(dict(residual=True))
    with pytest.raises(ConfigError, match="proxy_gamma must be > 0"):
        CASSConfig.from_keys(dict(method="proxyclip", proxy_gamma=0))
    with pytest.raises(ConfigError, match="area_thd"):
        CASSConfig.from_keys(dict(area_thd=1.5))
    with pytest.raises(ConfigError, match=r"^method 'proxyclip' needs a VFM \(vfm is None\)$"):
        CASSModel(tiny_clip(), None, Vocabulary.from_classes(["cat"]), CASSConfig.from_keys(dict(method="proxyclip")))
    # a baseline without DINO is fine
    model = CASSModel(tiny_clip(), None, Vocabulary.from_classes(["cat"]), CASSConfig.from_keys(dict(method="naclip")),
                      text_cache_dir=False)
    assert model.vfm is None


def test_method_keys_round_trip():
    cfg = CASSConfig.from_keys(dict(method="proxyclip", proxy_beta=1.0, refine_text=True, area_thd=0.1))
    assert (cfg.method.name, cfg.settings.proxy_beta, cfg.method.refines_text) == ("proxyclip", 1.0, True)
    assert not cfg.method.keeps_residual and CASSConfig.from_keys(cfg.to_keys()) == cfg
    assert [CASSConfig.from_keys(dict(method=m)).method.keeps_residual for m in method_names()] == \
        [False, True, True, True, False, False, False, False, False]


def test_a_method_owns_its_settings():
    """A method's own settings are its entry's dataclass: defaults stated once, kept while the method
    changes to one with the same settings, dropped for one without, a key of another method refused."""
    proxy = get_method("proxyclip").settings
    assert get_method("trident").settings is proxy and get_method("cass").settings is None
    assert CASSConfig.from_keys(dict(method="proxyclip")).settings == proxy() == proxy(1.2, 3.0)
    tuned = CASSConfig.from_keys(dict(method="proxyclip", proxy_gamma=2.0))
    assert tuned.replace(method="trident").settings == proxy(proxy_gamma=2.0)
    assert tuned.replace(method="cass").settings is None and "proxy_gamma" not in tuned.replace(method="cass").to_keys()
    assert tuned.to_keys()["proxy_gamma"] == 2.0
    with pytest.raises(ConfigError, match=r"^'proxy_beta' is a setting of method proxyclip and trident, "
                                          r"not of method 'sclip'$"):
        CASSConfig.from_keys(dict(method="sclip", proxy_beta=1.0))


def test_proxyclip_refuses_a_rotary_vfm():
    """ProxyCLIP resizes an absolute positional embedding; DINOv3 (RoPE) is refused in one line, before any forward."""
    with pytest.raises(ConfigError, match=r"^method 'proxyclip' needs a VFM with an absolute positional embedding"):
        CASSModel(tiny_clip(), build_vfm("dinov3_vitb16", **TINY_VFM), Vocabulary.from_classes(["cat"]),
                  CASSConfig.from_keys(dict(method="proxyclip")), text_cache_dir=False)
