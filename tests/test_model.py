"""The CASS model end to end with tiny random models (no mmseg)."""

import pytest
import timm
import torch
from conftest import model_keys, tiny_clip, tiny_dino

from cass import CASSConfig, CASSModel, ConfigError, Vocabulary, VocabularyError, build_model
from cass.windows import slide_windows


def normalised(images):
    mean = torch.tensor([122.771, 116.746, 104.094])[:, None, None]
    std = torch.tensor([68.501, 66.632, 70.323])[:, None, None]
    return (images.float() - mean) / std


def random_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, h // 8 + 1, w // 8 + 1, generator=g) * 255
    return torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0]


@pytest.fixture()
def build(weights_dir, class_file):
    def make(**overrides):
        return build_model(**model_keys(weights_dir, class_file, **overrides))
    return make


def predict(model, image, ori=None):
    img = normalised(image)
    return model([img], [ori or tuple(img.shape[-2:])])[0]


def test_slide_windows_match_mmseg_scheme():
    boxes = slide_windows(336, 448, 224, 112)
    assert boxes == [(0, 0, 224, 224), (0, 112, 224, 336), (0, 224, 224, 448),
                     (112, 0, 336, 224), (112, 112, 336, 336), (112, 224, 336, 448)]
    assert slide_windows(100, 150, 224, 112) == [(0, 0, 100, 150)]
    assert slide_windows(300, 224, 224, 112)[-1] == (76, 0, 300, 224)


def test_predict_outputs_probabilities_and_labels(build):
    model = build(prob_thd=0.5)
    probs, labels = predict(model, random_image(240, 300), ori=(120, 150))
    assert probs.shape == (4, 120, 150) and labels.shape == (120, 150)
    assert torch.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    top, arg = probs.max(0)
    expected = torch.where(top < 0.5, torch.zeros_like(arg), arg)
    assert torch.equal(labels, expected)


def test_synonyms_merged_by_max(build):
    model = build()
    img = normalised(random_image(224, 224))
    logits = model.query_logits([img])[0]  # (Q=7, H, W) query logits
    probs = (logits * 40).softmax(0)
    expected = torch.stack([probs[0:3].max(0).values, probs[3], probs[4:6].max(0).values, probs[6]])
    torch.testing.assert_close(model([img])[0].probs, expected)


def test_slide_average_equals_per_crop_logits(build):
    model = build()
    img = normalised(random_image(224, 336))
    logits = model.query_logits([img])[0]
    total = torch.zeros_like(logits)
    count = torch.zeros(1, *logits.shape[-2:])
    prior = model.global_embeddings(img[None])
    for y1, x1, y2, x2 in slide_windows(224, 336, 224, 112):
        total[:, y1:y2, x1:x2] += model.crop_logits(img[None, :, y1:y2, x1:x2], prior)[0]
        count[:, y1:y2, x1:x2] += 1
    torch.testing.assert_close(logits, total / count, atol=1e-5, rtol=1e-5)


def test_batch_equals_one_at_a_time_and_is_deterministic(build):
    model = build()
    a, b = normalised(random_image(224, 300, 1)), normalised(random_image(200, 260, 2))
    together = model([a, b], [(224, 300), (100, 130)])
    alone = [model([a], [(224, 300)])[0], model([b], [(100, 130)])[0]]
    for t, s in zip(together, alone):
        torch.testing.assert_close(t.probs, s.probs, atol=1e-5, rtol=1e-4)
        assert (t.labels != s.labels).float().mean() < 1e-3
    again = model([a], [(224, 300)])[0]
    assert torch.equal(again.probs, alone[0].probs)


@pytest.mark.parametrize("h, w", [(100, 150), (230, 250), (17, 40)])
def test_odd_sizes(build, h, w):
    """Sizes that are not multiples of the patch or the stride, and smaller than a window: the prediction
    is the window average of the crops' logits, x40 softmax, synonyms merged by max, then argmax."""
    model = build()
    img = normalised(random_image(h, w))
    total, count = torch.zeros(7, h, w), torch.zeros(1, h, w)
    prior = model.global_embeddings(img[None])
    for y1, x1, y2, x2 in slide_windows(h, w, 224, 112):
        total[:, y1:y2, x1:x2] += model.crop_logits(img[None, :, y1:y2, x1:x2], prior)[0]
        count[:, y1:y2, x1:x2] += 1
    queries = (total / count * 40).softmax(0)
    want = torch.stack([queries[0:3].amax(0), queries[3], queries[4:6].amax(0), queries[6]])
    probs, labels = predict(model, random_image(h, w))
    torch.testing.assert_close(probs, want, atol=1e-5, rtol=1e-4)
    assert torch.equal(labels, probs.argmax(0))


def test_constant_image_has_no_nan(build):
    for strategy in ("spectral", "sequential"):
        probs, _ = predict(build(attn_strategy=strategy), torch.full((3, 224, 224), 128.0))
        assert torch.isfinite(probs).all()


def test_one_class(build):
    """A one-class vocabulary: its query logits are that query's row of a larger vocabulary's (without
    text refinement, a query's logits F . t do not depend on the others), and every pixel is that class."""
    img = random_image(224, 224)
    one = build(classes=["cat"], refine_text=False)
    two = build(classes=["dog", "cat"], refine_text=False)
    torch.testing.assert_close(one.query_logits([normalised(img)])[0], two.query_logits([normalised(img)])[0][1:])
    probs, labels = predict(one, img)
    assert probs.shape == (1, 224, 224) and torch.equal(labels, torch.zeros(224, 224, dtype=torch.long))


@pytest.mark.parametrize("overrides", [
    dict(attn_strategy="sequential"), dict(attn_strategy="vanilla"),
    dict(low_rank=None), dict(dino_input="plain"), dict(eigenscaling=False),
    dict(dino_keys_fp16=False), dict(prior_from_crop=True), dict(slide_crop=0), dict(pamr_steps=2),
])
def test_options_change_the_output(build, overrides):
    img = random_image(224, 336, seed=3)
    base = predict(build(), img).probs
    other = predict(build(**overrides), img).probs
    assert torch.isfinite(other).all()
    assert not torch.allclose(base, other)


@pytest.mark.parametrize("canonical, swapped", [(True, True), (False, True), (True, False), (False, False)])
def test_matching_options_reach_the_head_matching(build, monkeypatch, canonical, swapped):
    """canonical_matching and swapped_pairing reach the matching and the pairing (whose values are
    checked against loops and brute force in test_spectral.py; with the 2-head test models the
    variants coincide, so the output cannot show them)."""
    from cass import spectral
    seen = []
    match_heads, pairing = spectral.match_heads, spectral.pairing
    monkeypatch.setattr(spectral, "match_heads", lambda cost, canonical=True, *a, **k: (
        seen.append(("canonical", canonical)), match_heads(cost, canonical, *a, **k))[1])
    monkeypatch.setattr(spectral, "pairing", lambda cost, cols, swapped=True: (
        seen.append(("swapped", swapped)), pairing(cost, cols, swapped))[1])
    predict(build(canonical_matching=canonical, swapped_pairing=swapped), random_image(224, 224))
    assert seen and set(seen) == {("canonical", canonical), ("swapped", swapped)}


def test_whole_image_mode_is_one_pass(build):
    model = build(slide_crop=0)
    img = normalised(random_image(200, 264))
    torch.testing.assert_close(model.query_logits([img])[0], model.crop_logits(img[None], None)[0])


def test_bad_settings_fail_before_weights_are_read(tmp_path, class_file):
    missing = dict(clip_path=str(tmp_path / "none.pt"), vfm_path=str(tmp_path / "none.pth"),
                   name_path=str(class_file))
    with pytest.raises(ConfigError, match="attn_strategy"):
        build_model(**missing, attn_strategy="fancy")
    with pytest.raises(ConfigError, match="unknown model setting.*slide_crap"):
        build_model(**missing, slide_crap=0)
    with pytest.raises(VocabularyError, match="no vocabulary"):
        build_model(clip_path=missing["clip_path"])


def test_config_keys_round_trip():
    cfg = CASSConfig.from_keys(dict(slide_crop=0, global_semantics_weight=0.3, precision="fp16",
                                    vfm_precision="fp32", low_rank=None))
    assert cfg.window.slide_crop == 0 and cfg.text.global_semantics_weight == 0.3
    assert (cfg.precision.clip, cfg.precision.vfm, cfg.spectral.low_rank) == ("fp16", "fp32", None)
    assert CASSConfig.from_keys(cfg.to_keys()) == cfg
    assert cfg.precision.resolve("cpu") == ("fp16", "fp32")
    assert CASSConfig().precision.resolve("cuda") == ("fp16", "tf32")  # the released code's GPU numerics
    assert CASSConfig().precision.resolve("cpu") == ("fp32", "fp32")
    with pytest.raises(ConfigError, match="prob_thd"):
        CASSConfig.from_keys(dict(prob_thd=2))


def test_predict_leaves_passed_modules_unchanged():
    clip, dino = tiny_clip(1), tiny_dino(1)
    before = {k: v.clone() for k, v in {**clip.state_dict(), **{f"dino.{k}": v for k, v in dino.state_dict().items()}}.items()}
    model = CASSModel(clip, dino, Vocabulary.from_classes(["cat", "dog, puppy"]),
                      CASSConfig.from_keys(dict(precision="fp32")), text_cache_dir=False)
    model([normalised(random_image(224, 300))])
    after = {**clip.state_dict(), **{f"dino.{k}": v for k, v in dino.state_dict().items()}}
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def test_precision_is_set_when_built_and_moved():
    clip = tiny_clip(2)
    model = CASSModel(clip, tiny_dino(2), Vocabulary.from_classes(["cat"]),
                      CASSConfig.from_keys(dict(precision="fp16", vfm_precision="bf16")), text_cache_dir=False)
    assert model.clip.visual.conv1.weight.dtype == torch.float16
    assert model.clip.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16  # text tower too
    assert model.vfm.patch_embed.proj.weight.dtype == torch.bfloat16
    model.to("cpu")  # a move keeps the configured precision (a cast sets it: test_family.py)
    assert model.clip.visual.conv1.weight.dtype == torch.float16
    assert model.vfm.patch_embed.proj.weight.dtype == torch.bfloat16
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model([normalised(random_image(224, 224))])
    assert dtypes == {k: v.dtype for k, v in model.state_dict().items()}


def test_text_embeddings_can_be_given(build):
    model = build()
    given = torch.nn.functional.normalize(torch.randn(len(model.vocabulary.queries), 32), dim=-1)
    model.set_text_embeddings(given)
    assert torch.equal(model.text_state()[0], given)
    with pytest.raises(ValueError, match="query embeddings"):
        model.set_text_embeddings(given[:2])


@pytest.mark.parametrize("precision, agreement", [("fp16", 0.99), ("bf16", 0.95)])
def test_low_precision_agrees_with_float32(build, precision, agreement):
    img = random_image(224, 300, seed=4)
    ref = predict(build(precision="fp32"), img)
    low = predict(build(precision=precision), img)
    assert torch.isfinite(low.probs).all()
    same = (low.labels == ref.labels).float().mean().item()
    assert same >= agreement


def test_too_thin_image_is_a_clear_error(build):
    with pytest.raises(ValueError, match="smaller than one CLIP patch"):
        build()([normalised(random_image(10, 300))])


@pytest.mark.parametrize("strategy", ["spectral", "sequential"])
def test_energy_threshold_reaches_the_energy_rule(build, strategy):
    img = random_image(224, 224, seed=5)
    loose = predict(build(attn_strategy=strategy, low_rank=None, energy_threshold=0.95), img).probs
    tight = predict(build(attn_strategy=strategy, low_rank=None, energy_threshold=0.3), img).probs
    assert not torch.allclose(loose, tight)


def test_mismatched_heads_name_the_public_vfms_that_fit():
    """CASS pairs heads one to one: a 12-head CLIP with a 2-head VFM is refused, naming the 12-head VFMs."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    clip = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=1, width=768, patch_size=16, image_size=224),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                quick_gelu=True)
    with pytest.raises(ConfigError) as err:
        CASSModel(clip, tiny_dino(), Vocabulary.from_classes(["cat"]), text_cache_dir=False)
    message = str(err.value)
    assert "\n" not in message and "CLIP's last block has 12 heads and the VFM 2" in message
    assert "public VFMs with 12 heads: dino_vitb8, dino_vitb16, dinov2_vitb14" in message
    with pytest.raises(ConfigError, match="public VFMs with 2 heads: none"):
        CASSModel(tiny_clip(), timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0,
                                                 embed_dim=96, depth=1, num_heads=3),
                  Vocabulary.from_classes(["cat"]), text_cache_dir=False)
