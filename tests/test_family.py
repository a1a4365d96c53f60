"""Methods as registered parts: the registry, what a configuration needs, outputs unchanged bit for bit."""
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_VFM, load_script, tiny_clip, tiny_dino, write_clip_state_dict

from cass import CASSConfig, CASSModel, ConfigError, Vocabulary, build_model, clip_vit
from cass.methods import common
from cass.benchmarks import CONFIGS_DIR
from cass.protocols import cfg_options
from cass.methods import METHODS, Method, Requirements, get_method, register_method, requirements
from cass.method_context import MethodContext
from cass.text import read_class_file
from cass.weights import build_vfm

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background, sky", "cat", "dog, puppy", "grass"]


def _outputs_script():
    return load_script("tests/data/make_method_outputs.py", "make_method_outputs")


# ---------------------------------------------------------------- outputs unchanged
@pytest.mark.parametrize("method", list(_outputs_script().METHODS))
def test_outputs_equal_the_stored_ones(method):
    """Probabilities and labels of every method, slide and whole image, equal those saved before the
    methods became registered parts (tests/data/make_method_outputs.py, commit b66ad92).

    Equal to float32 rounding, not bit for bit: the saved file was written on another CPU, and
    another instruction set (AVX2, AVX-512) sums in another order (about 6e-6 apart). Labels must
    be equal wherever the saved top two classes are not within that rounding of each other. A
    refactor is checked bit for bit by running the script before and after on one machine.
    """
    script = _outputs_script()
    stored = torch.load(script.OUTPUTS)
    current = script.outputs((method,))
    for setting in script.SETTINGS:
        name = f"{method}/{setting}"
        assert script.close(current[name], stored[name]), name


@pytest.mark.parametrize("case", list(_outputs_script().SAM_CASES))
def test_sam_outputs_equal_the_stored_ones(case):
    """Trident, and SAM's aggregation and refinement as options of other methods (a tiny SAM keeping
    some masks and rejecting others), equal those saved before the merge steps left the model."""
    script = _outputs_script()
    stored = torch.load(script.OUTPUTS)[case]
    current = script.sam_outputs((case,))[case]
    assert script.close(current, stored), case


# ---------------------------------------------------------------- what a configuration needs
@pytest.mark.parametrize("keys, want", [
    (dict(), Requirements(vfm=True, paired_heads=True, vfm_positions="any")),
    (dict(attn_strategy="sequential"), Requirements(vfm=True, paired_heads=True, vfm_positions="any")),
    (dict(attn_strategy="vanilla"), Requirements(vfm=False, paired_heads=False, vfm_positions="any")),
    *[(dict(method=m), Requirements(vfm=False, paired_heads=False, vfm_positions="any"))
      for m in ("clip", "maskclip", "sclip", "clearclip", "naclip")],
    (dict(method="proxyclip"), Requirements(vfm=True, paired_heads=False, vfm_positions="absolute")),
    (dict(method="proxyclip", attn_strategy="vanilla"), Requirements(vfm=True, paired_heads=False,
                                                                     vfm_positions="absolute")),
    # Trident: a VFM with absolute positions, no head pairing (attn_strategy is CASS's), and SAM for either
    # of its helps, both on as published; only both off needs no SAM
    *[(dict(method="trident", **extra), Requirements(vfm=True, paired_heads=False, vfm_positions="absolute", sam=True))
      for extra in (dict(), dict(sam_aggregation=False), dict(sam_refinement=False), dict(attn_strategy="vanilla"))],
    (dict(method="trident", sam_aggregation=False, sam_refinement=False),
     Requirements(vfm=True, paired_heads=False, vfm_positions="absolute", sam=False)),
    # any other method needs SAM when either help is switched on, and the towers it needs without it
    (dict(sam_aggregation=True), Requirements(vfm=True, paired_heads=True, vfm_positions="any", sam=True)),
    (dict(sam_refinement=True), Requirements(vfm=True, paired_heads=True, vfm_positions="any", sam=True)),
    (dict(sam_aggregation=False, sam_refinement=False),
     Requirements(vfm=True, paired_heads=True, vfm_positions="any", sam=False)),
    (dict(attn_strategy="vanilla", sam_refinement=True),
     Requirements(vfm=False, paired_heads=False, vfm_positions="any", sam=True)),
    (dict(method="sclip", sam_aggregation=True),
     Requirements(vfm=False, paired_heads=False, vfm_positions="any", sam=True)),
    (dict(method="proxyclip", sam_refinement=True),
     Requirements(vfm=True, paired_heads=False, vfm_positions="absolute", sam=True)),
])
def test_requirements(keys, want):
    assert requirements(CASSConfig.from_keys(keys)) == want


@pytest.fixture()
def offline_clip_only(tmp_path, class_file):
    """A local CLIP file and no VFM file anywhere (downloads are disabled in the tests)."""
    return dict(clip_path=str(write_clip_state_dict(tmp_path / "clip.pt")), name_path=str(class_file),
                text_cache_dir=False)


@pytest.mark.parametrize("method", ["clip", "maskclip", "sclip", "clearclip", "naclip"])
def test_clip_only_methods_need_no_vfm_weights(method, offline_clip_only, tmp_path):
    """Fails on b66ad92: the builder read the DINO file for every method but 'vanilla' CASS."""
    model = build_model(method=method, **offline_clip_only)
    assert model.vfm is None
    assert model([torch.zeros(3, 32, 48)])[0].probs.shape == (4, 32, 48)
    # neither a missing VFM file nor an unknown architecture override is looked at
    assert build_model(method=method, vfm_path=str(tmp_path / "absent.pth"), **offline_clip_only).vfm is None


def test_cass_still_needs_its_vfm_weights(offline_clip_only):
    with pytest.raises(Exception, match="dino_vitbase8_pretrain.pth"):
        build_model(**offline_clip_only, vfm_overrides=TINY_VFM)


def test_proxyclip_with_the_vanilla_strategy_builds(weights_dir, class_file):
    """Fails on b66ad92 ("needs a VFM"): attn_strategy is CASS's setting and does not reach ProxyCLIP."""
    keys = dict(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                vfm_overrides=TINY_VFM, name_path=str(class_file), text_cache_dir=False, method="proxyclip")
    model = build_model(attn_strategy="vanilla", **keys)
    assert model.vfm is not None
    image = torch.linspace(-1, 1, 3 * 64 * 80).reshape(3, 64, 80)
    assert torch.equal(model([image])[0].probs, build_model(**keys)([image])[0].probs)


def test_proxyclip_needs_no_head_pairing(weights_dir, class_file):
    """Fails on b66ad92 (the builder checked head counts for every method): ProxyCLIP never pairs heads."""
    three_heads = build_vfm("dino_vitb8", embed_dim=96, depth=2, num_heads=3)  # CLIP has 2
    keys = dict(clip_path=str(weights_dir / "tiny_clip.pt"), name_path=str(class_file), text_cache_dir=False)
    model = build_model(method="proxyclip", vfm_model=three_heads, **keys)
    assert model.vfm is three_heads and torch.isfinite(model([torch.zeros(3, 32, 32)])[0].probs).all()
    with pytest.raises(ConfigError, match=r"^CLIP's last block has 2 heads and vfm 'dino_vitb8' 3: method 'cass' "
                                          r"pairs heads one to one"):
        build_model(vfm_model=three_heads, **keys)


def test_vfm_path_and_its_former_name(weights_dir, class_file):
    keys = dict(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_overrides=TINY_VFM, name_path=str(class_file),
                text_cache_dir=False)
    image = torch.linspace(-1, 1, 3 * 32 * 48).reshape(3, 32, 48)
    new = build_model(vfm_path=str(weights_dir / "tiny_dino.pth"), **keys)([image])[0].probs
    old = build_model(dino_path=str(weights_dir / "tiny_dino.pth"), **keys)([image])[0].probs
    assert torch.equal(new, old)
    with pytest.raises(ConfigError, match="give the VFM weights once"):
        build_model(vfm_path=str(weights_dir / "tiny_dino.pth"), dino_path="other.pth", **keys)


# ---------------------------------------------------------------- each method's own vocabulary
OWN_FILES = [  # (method, benchmark, class index, the queries of that class in the method's file)
    ("clearclip", "cfg_voc21", 0, ["background"]),
    ("clearclip", "cfg_voc20", 14, ["person"]),
    ("clearclip", "cfg_coco_object", 0, ["background"]),
    ("proxyclip", "cfg_voc21", 20, ["tvmonitor"]),
    ("proxyclip", "cfg_voc20", 19, ["tvmonitor"]),
    ("proxyclip", "cfg_coco_object", 0, ["sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain",
                                         "sands", "desk", "bed", "building", "cloud", "floor", "hill", "rail"]),
    # Trident ships ProxyCLIP's files for these three (compared line by line with YuHengsss/Trident)
    ("trident", "cfg_voc21", 20, ["tvmonitor"]),
    ("trident", "cfg_voc20", 19, ["tvmonitor"]),
    ("trident", "cfg_coco_object", 0, ["sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain",
                                       "sands", "desk", "bed", "building", "cloud", "floor", "hill", "rail"]),
    # CorrCLIP ships its own file for every benchmark: "people" for "person", a shorter COCO-Object background
    ("corrclip", "cfg_voc21", 15, ["people"]),
    ("corrclip", "cfg_context60", 37, ["people"]),
    ("corrclip", "cfg_coco_object", 0, ["sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain",
                                        "sands", "desk", "building", "cloud", "floor", "hill", "rail"]),
    ("corrclip", "cfg_voc20", 14, ["people"]),
    ("corrclip", "cfg_context59", 36, ["people"]),
    ("corrclip", "cfg_coco_stuff164k", 0, ["people"]),
    ("corrclip", "cfg_city_scapes", 11, ["people"]),
    ("corrclip", "cfg_ade20k", 12, ["people"]),
]


@pytest.mark.parametrize("method, benchmark, index, queries", OWN_FILES)
def test_published_protocol_uses_the_methods_own_class_names(method, benchmark, index, queries):
    options = dict(o.split("=", 1) for o in cfg_options(method, benchmark))
    path = Path(options["model.name_path"])
    folder = "proxyclip" if method == "trident" else method  # Trident's files are ProxyCLIP's
    assert path.parent == CONFIGS_DIR / folder and path.is_file()
    names, query_class, display = read_class_file(path)
    assert [n for n, c in zip(names, query_class) if c == index] == queries
    shared_names, shared_class, shared_display = read_class_file(CONFIGS_DIR / path.name)
    assert len(display) == len(shared_display)  # same classes, same order ...
    assert [n for n, c in zip(shared_names, shared_class) if c == index] != queries  # ... other names
    # the CASS protocol keeps the benchmark config's file
    assert not any(o.startswith("model.name_path=") for o in cfg_options(method, benchmark, "cass"))


def test_other_methods_use_the_benchmark_config_class_names():
    for name, method in METHODS.items():
        for benchmark, settings in method.protocol.items():
            if "class_file" not in settings:
                assert not any(o.startswith("model.name_path=") for o in cfg_options(name, benchmark))
    assert {(m, b) for m, b, *_ in OWN_FILES} == {
        (name, b) for name, method in METHODS.items() for b, s in method.protocol.items() if "class_file" in s}


# ---------------------------------------------------------------- the model names no method; adding one
def test_the_model_names_no_method():
    """No method name in cass/model.py ("clip" is also the tower's name there) and no comparison with one."""
    import ast
    source = (REPO / "cass" / "model.py").read_text()
    for name in set(METHODS) - {"clip"}:
        assert f'"{name}"' not in source and f"'{name}'" not in source, name
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            names = [n.attr for side in [node.left, *node.comparators] for n in ast.walk(side)
                     if isinstance(n, ast.Attribute)]
            assert "name" not in names and "method" not in names, ast.unparse(node)


def key_key_features(ctx, crops, tokens, grid):
    """The worked example of docs/architecture.md: ``softmax(s K K^T)`` over CLS + patches, no residual."""
    assert type(ctx) is MethodContext  # the towers and settings, never the model
    visual = ctx.clip.visual
    q, k, v = common.block_qkv(visual.transformer.resblocks[-1], tokens)
    attn = common.self_self_attention(k)
    return common.last_block_features(visual, common.attend(attn, v), None, 1), grid


@pytest.fixture()
def keykey():
    sys.modules.setdefault("test_family", sys.modules[__name__])
    method = register_method(Method(name="keykey", title="key-key attention (example)",
                                    last_block="test_family:key_key_features"))
    yield method
    del METHODS["keykey"]


def test_a_new_method_is_one_entry(keykey):
    clip = tiny_clip()
    model = CASSModel(clip, tiny_dino(), Vocabulary.from_classes(CLASSES),
                      CASSConfig.from_keys(dict(method="keykey", precision="fp32")), text_cache_dir=False)
    assert model.vfm is None and not model.config.method.refines_text and not model.config.method.keeps_residual
    image = torch.linspace(-2, 2, 3 * 48 * 64).reshape(3, 48, 64)
    probs = model([image])[0].probs
    # the shared pipeline around it: one window, F . t upsampled, x 40 softmax, synonyms merged by max
    tokens, grid = clip_vit.clip_trunk(clip.visual, image[None])
    feats, _ = key_key_features(model.method_context(), image[None], tokens, grid)
    text_feats, _ = model.text_state()
    logits = torch.nn.functional.interpolate((feats @ text_feats.T).transpose(1, 2).reshape(1, -1, *grid),
                                             size=(48, 64), mode="bilinear", align_corners=False)[0] * 40
    want = logits.softmax(0)
    want = torch.stack([want[0:2].amax(0), want[2], want[3:5].amax(0), want[5]])
    torch.testing.assert_close(probs, want)
    with pytest.raises(ValueError, match="already registered"):
        register_method(keykey)


def test_a_method_with_its_own_merge_step(keykey):
    """A merge step registered from outside the package (cass.merges.register_merge_step): here the
    windows' average with doubled logits, which is the same as doubling the logit scale."""
    from cass.merges import MERGE_STEPS, AverageLogits, register_merge_step

    class DoubledLogits(AverageLogits):
        def logits(self, model, maps):
            return 2 * maps

    register_merge_step("doubled", DoubledLogits())
    register_method(Method(name="keykey2", title="key-key, doubled", last_block="test_family:key_key_features",
                           merge="doubled"))
    register_method(Method(name="keykey3", title="key-key, unknown merge", last_block="test_family:key_key_features",
                           merge="tokens"))
    try:
        image = torch.linspace(-2, 2, 3 * 48 * 64).reshape(3, 48, 64)
        clip, vocabulary = tiny_clip(), Vocabulary.from_classes(CLASSES)

        def probs(method, scale):
            keys = dict(method=method, precision="fp32", logit_scale=scale, slide_crop=32, slide_stride=16)
            return CASSModel(clip, None, vocabulary, CASSConfig.from_keys(keys), text_cache_dir=False)([image])[0].probs

        doubled = probs("keykey2", 40)
        torch.testing.assert_close(doubled, probs("keykey", 80))
        assert not torch.allclose(doubled, probs("keykey", 40))
        with pytest.raises(ValueError, match="already registered"):
            register_merge_step("doubled", DoubledLogits())
        with pytest.raises(ConfigError, match=r"^method 'keykey3' merges its crops with 'tokens', which is no merge "
                                              r"step; merge steps: logits, features, regions, doubled \(cass.merges"):
            probs("keykey3", 40)
    finally:
        MERGE_STEPS.pop("doubled", None)
        METHODS.pop("keykey2", None)
        METHODS.pop("keykey3", None)


def test_unknown_method_is_one_line():
    with pytest.raises(ConfigError, match=r"^method must be one of \('cass', .*'proxyclip', 'trident', 'corrclip'\), got 'dino'$"):
        CASSConfig.from_keys(dict(method="dino"))
    with pytest.raises(KeyError, match="unknown method 'dino'"):
        get_method("dino")
    with pytest.raises(ValueError, match="merge must name a merge step"):
        Method(name="x", title="x", last_block="m:f", merge="")


# ---------------------------------------------------------------- casts set the precision
def test_casts_set_the_precision_of_both_towers():
    model = CASSModel(tiny_clip(), tiny_dino(), Vocabulary.from_classes(["cat"]), text_cache_dir=False)
    assert model.precisions() == ("fp32", "fp32")
    assert model.half() is model and model.precisions() == ("fp16", "fp16")
    assert model.clip.visual.conv1.weight.dtype == torch.float16 and model.vfm.patch_embed.proj.weight.dtype == torch.float16
    assert model.clip.visual.ln_post.weight.dtype == torch.float32  # LayerNorms stay float32, as OpenAI's fp16 CLIP
    model.to(torch.bfloat16)
    assert model.precisions() == ("bf16", "bf16") and model.vfm.patch_embed.proj.weight.dtype == torch.bfloat16
    model.to("cpu", dtype=torch.float32)
    assert model.config.precision.clip == "fp32" and model.clip.visual.conv1.weight.dtype == torch.float32
    model.bfloat16().float()
    assert model.precisions() == ("fp32", "fp32") and model.vfm.patch_embed.proj.weight.dtype == torch.float32
    model.to("cpu")  # a move keeps the precision
    assert model.precisions() == ("fp32", "fp32")
    with pytest.raises(TypeError, match="not torch.float64"):
        model.double()
    assert model.set_precision("fp16", "fp32").precisions() == ("fp16", "fp32")


# ---------------------------------------------------------------- protocols with their values
def test_protocol_options_are_cfg_options_with_their_values():
    """protocol_options (Segmenter, demo.py, eval.py and the web app) holds what cfg_options writes for
    eval_all.sh, as mmengine's DictAction reads it back; a config that is no benchmark's has none."""
    from mmengine.config import DictAction

    from cass.benchmarks import BENCHMARKS, PROTOCOL_NAMES, RESIZE_KEY

    from cass.protocols import protocol_options

    for name in METHODS:
        for benchmark in BENCHMARKS:
            for protocol in PROTOCOL_NAMES:
                typed = protocol_options(name, CONFIGS_DIR / f"{benchmark}.py", protocol)
                parsed = {key: DictAction._parse_iterable(value)
                          for key, value in (o.split("=", 1) for o in cfg_options(name, benchmark, protocol))}
                assert parsed == typed, (name, benchmark, protocol)
    trident = protocol_options("trident", "configs/cfg_city_scapes.py")
    assert (trident[RESIZE_KEY], trident["model.sam_halves"], trident["model.vfm"]) == ((2048, 688), True, "dino_vitb16")
    assert protocol_options("cass", "my_config.py") == {}  # CASS's protocol is the config itself
    assert protocol_options("sclip", "my_config.py", "cass") == {"model.method": "sclip"}
    with pytest.raises(KeyError, match="my_config is not a benchmark config"):
        protocol_options("sclip", "my_config.py")
    with pytest.raises(KeyError, match="unknown protocol 'paper'"):
        protocol_options("sclip", "configs/cfg_voc21.py", "paper")
