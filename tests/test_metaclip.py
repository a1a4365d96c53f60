"""MetaCLIP ViT-B/16 and ViT-L/14 (2.5B, full CommonCrawl): CorrCLIP's CLIPs.

The table entries are open_clip's own record of the releases; a file in
Meta's release layout (``{'state_dict': ...}``, OpenAI's key layout, QuickGELU)
loads through :func:`cass.weights.load_clip` into a model that computes what
``open_clip.create_model('ViT-B-16-quickgelu')`` computes with the same file
(open_clip's own loader), bit for bit.

Opt-in (``CASS_CORRCLIP_REPO``: a checkout of zdk258/CorrCLIP, or its
``CorrCLIPv1`` folder): the text embeddings and the positional-embedding
resize of our CLIP pipeline against CorrCLIP's release (its vendored
open_clip 2.24 and its ``generate_category_embeddings``).
"""
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error
from open_clip.model import CLIP
from open_clip.pretrained import get_pretrained_cfg

from cass import clip_vit, random_weights, text, weights
from cass.backbones import CLIP_SPECS, METACLIP_URL, CLIPSpec

METACLIPS = {"ViT-B-16-quickgelu/metaclip_fullcc": ("b16_fullcc2.5b.pt", 16, 12),
             "ViT-L-14-quickgelu/metaclip_fullcc": ("l14_fullcc2.5b.pt", 14, 16)}


def _write(path, state):
    torch.save(state, path)
    return path


# ----------------------------------------------------------------------------- the table
@pytest.mark.parametrize("name", sorted(METACLIPS))
def test_entries_are_open_clips_record_of_the_release(name):
    spec = CLIP_SPECS[name]
    file, patch, heads = METACLIPS[name]
    model, tag = name.split("/")
    assert (spec.open_clip_name, spec.release_format, spec.release_file) == (model, "metaclip", file)
    assert spec.url == METACLIP_URL + file
    cfg = get_pretrained_cfg(model, tag)  # the URL and activation open_clip (and CorrCLIP) load
    assert cfg["url"] == spec.url and cfg["quick_gelu"]
    config = open_clip.get_model_config(model)
    assert config["quick_gelu"] and config["vision_cfg"]["patch_size"] == patch
    assert weights.clip_heads(name) == heads
    assert weights.head_pairings()[name] == weights.head_pairings()["ViT-B/16" if heads == 12 else "ViT-L/14"]


def test_unknown_release_format_is_refused():
    with pytest.raises(ValueError, match="release_format"):
        CLIPSpec("ViT-B-16", "https://x/f.pt", release_format="meta")


# ----------------------------------------------------------------------------- loading
def test_full_size_release_file_computes_what_open_clip_computes(tmp_path):
    """Meta's layout, full-size ViT-B/16: our loader's model equals open_clip's ViT-B-16-quickgelu
    loaded by open_clip's load_checkpoint, weights and outputs bit for bit (both towers QuickGELU)."""
    name = "ViT-B-16-quickgelu/metaclip_fullcc"
    path = random_weights.write_clip(tmp_path / CLIP_SPECS[name].release_file, seed=1, arch=name)
    checkpoint = torch.load(path)
    assert list(checkpoint) == ["state_dict"] and "visual.proj" in checkpoint["state_dict"]
    assert checkpoint["state_dict"]["visual.proj"].dtype == torch.float32
    assert weights.open_clip_arch(checkpoint["state_dict"]) is None  # not taken for an OpenCLIP (GELU) release
    ours = weights.load_clip(str(path))
    reference = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    open_clip.load_checkpoint(reference, str(path))
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    for tower in (ours.visual.transformer, ours.transformer):
        assert all(isinstance(block.mlp.gelu, open_clip.transformer.QuickGELU) for block in tower.resblocks)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    tokens = open_clip.tokenize(["a photo of a cat.", "sky"])
    with torch.no_grad():
        assert torch.equal(ours.encode_image(images), reference.encode_image(images))
        assert torch.equal(ours.encode_text(tokens), reference.encode_text(tokens))
        trunk, grid = clip_vit.clip_trunk(ours.visual, images)
        assert grid == (14, 14)
        torch.testing.assert_close(clip_vit.global_embedding(ours.visual, trunk),
                                   F.normalize(reference.encode_image(images), dim=-1), atol=1e-6, rtol=1e-5)


def test_full_size_shapes_are_not_taken_for_another_architecture():
    """Neither MetaCLIP model has the shapes of an OpenCLIP (GELU) entry of the table."""
    for name in METACLIPS:
        with torch.device("meta"):
            state = CLIP(**open_clip.get_model_config(CLIP_SPECS[name].open_clip_name)).state_dict()
        assert weights.open_clip_arch(state) is None


@pytest.mark.parametrize("name", sorted(METACLIPS))
@pytest.mark.parametrize("layout", ["meta", "hub", "ddp", "training"])
def test_release_layouts_load_the_same_weights(tmp_path, name, layout):
    """Meta's file, the hub's plain ``open_clip_pytorch_model.bin``, DDP-prefixed keys and a full training
    checkpoint (optimizer, step) give the same model (tiny models with the release's patch size)."""
    expected = random_weights.random_clip(tiny=True, seed=3, arch=name).state_dict()
    path = tmp_path / (CLIP_SPECS[name].release_file if layout != "hub" else "open_clip_pytorch_model.bin")
    if layout == "meta":
        random_weights.write_clip(path, tiny=True, seed=3, arch=name)
    elif layout == "hub":
        _write(path, expected)
    elif layout == "ddp":
        _write(path, {"state_dict": {f"module.{k}": v for k, v in expected.items()}})
    else:
        _write(path, {"step": 1000, "state_dict": {f"_orig_mod.{k}": v for k, v in expected.items()},
                      "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}})
    loaded = weights.load_clip(str(path))
    assert loaded.visual.conv1.kernel_size == (METACLIPS[name][1],) * 2
    assert isinstance(loaded.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    for key, value in expected.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_public_name_reads_the_cached_release(tmp_path, monkeypatch):
    name = "ViT-L-14-quickgelu/metaclip_fullcc"
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CASS_WEIGHTS_DIR", str(cache))
    one_line_error(lambda: weights.load_clip(name), "l14_fullcc2.5b.pt", METACLIP_URL + "l14_fullcc2.5b.pt",
                   "clip_path (--clip-path)")
    # a file of another model under the release's name is refused, naming both
    random_weights.write_clip(cache / "l14_fullcc2.5b.pt", tiny=True, arch=name)
    one_line_error(lambda: weights.load_clip(name), "l14_fullcc2.5b.pt", "width 128, patch 14, 2 blocks",
                   "ViT-L-14-quickgelu (width 1024, patch 14, 24 blocks)", "another model's")


@pytest.mark.parametrize("content, fragments", [
    (None, ["weights file not found"]),
    (b"not a checkpoint", ["not a readable PyTorch checkpoint"]),
    ({"state_dict": {"epoch": torch.tensor(1)}}, ["not a CLIP ViT checkpoint", "'visual.proj'"]),
])
def test_bad_files_give_one_line_errors(tmp_path, content, fragments):
    path = tmp_path / "b16_fullcc2.5b.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    one_line_error(lambda: weights.load_clip(str(path)), "b16_fullcc2.5b.pt", *fragments)


def test_release_missing_a_tensor_names_it(tmp_path):
    name = "ViT-B-16-quickgelu/metaclip_fullcc"
    checkpoint = torch.load(random_weights.write_clip(tmp_path / "full.pt", tiny=True, arch=name))
    del checkpoint["state_dict"]["transformer.resblocks.0.mlp.c_fc.bias"]
    path = _write(tmp_path / "b16_fullcc2.5b.pt", checkpoint)
    one_line_error(lambda: weights.load_clip(str(path)), "b16_fullcc2.5b.pt", "transformer.resblocks.0.mlp.c_fc.bias")


def test_random_weights_cli_writes_the_release_names(tmp_path):
    assert random_weights.main([str(tmp_path), "--tiny", "--vfm", "--clip", *sorted(METACLIPS)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b16_fullcc2.5b.pt", "l14_fullcc2.5b.pt"]
    for name, (file, patch, _) in METACLIPS.items():
        assert list(torch.load(tmp_path / file)) == ["state_dict"]
        assert weights.load_clip(str(tmp_path / file)).visual.conv1.kernel_size == (patch, patch)


# ----------------------------------------------------------------------------- against CorrCLIP's release (opt-in)
CORRCLIP = os.environ.get("CASS_CORRCLIP_REPO")
needs_corrclip = pytest.mark.skipif(not CORRCLIP, reason="set CASS_CORRCLIP_REPO to a checkout of zdk258/CorrCLIP")


@pytest.fixture(scope="module")
def corrclip():
    """CorrCLIP's CorrCLIPv1 folder, its vendored open_clip (imported as ``corrclip_open_clip``) and its
    prompt templates."""
    root = Path(CORRCLIP)
    root = root / "CorrCLIPv1" if (root / "CorrCLIPv1").is_dir() else root
    package = root / "open_clip"
    spec = importlib.util.spec_from_file_location("corrclip_open_clip", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    vendored = importlib.util.module_from_spec(spec)
    sys.modules["corrclip_open_clip"] = vendored
    spec.loader.exec_module(vendored)
    spec = importlib.util.spec_from_file_location("corrclip_templates", root / "prompts" / "imagenet_template.py")
    templates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(templates)
    yield SimpleNamespace(root=root, open_clip=vendored, templates=templates.openai_imagenet_template)
    for module in [m for m in sys.modules if m == "corrclip_open_clip" or m.startswith("corrclip_open_clip.")]:
        del sys.modules[module]


def corrclip_class_names(root):
    """CorrCLIP's ``get_cls_idx`` over every class file of its configs: names split on '; '."""
    names = []
    for file in sorted((root / "configs").glob("cls_*.txt")):
        for line in file.read_text().splitlines(keepends=True):
            names += [name.replace("\n", "") for name in line.split("; ")]
    return names


def corrclip_category_embeddings(model, tokenize, templates, names):
    """CorrCLIP's ``generate_category_embeddings``, its loop as released."""
    features = []
    with torch.inference_mode():
        for name in names:
            feature = model.encode_text(tokenize([template(name) for template in templates]))
            feature /= feature.norm(dim=-1, keepdim=True)
            feature = feature.mean(dim=0)
            feature /= feature.norm()
            features.append(feature.unsqueeze(0))
    return torch.cat(features, dim=0)


@needs_corrclip
def test_templates_and_tokens_are_corrclips(corrclip):
    """Our default templates are CorrCLIP's 80, in its order; open_clip 3.3's tokenizer gives its vendored
    tokenizer's tokens for every class name of its configs."""
    assert len(corrclip.templates) == len(open_clip.OPENAI_IMAGENET_TEMPLATES) == 80
    assert [t("{}") for t in corrclip.templates] == [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    names = corrclip_class_names(corrclip.root)
    assert len(names) == 621 and "wood " in names  # PC60's last class keeps a trailing space there
    prompts = [f"a photo of a {name}." for name in names] + [t(n) for n in names[:20] for t in corrclip.templates]
    assert torch.equal(open_clip.tokenize(prompts), corrclip.open_clip.tokenizer.tokenize(prompts))
    # the tokenizer cleans whitespace: our stripped class names give the same tokens
    assert torch.equal(open_clip.tokenize([t("wood") for t in corrclip.templates]),
                       corrclip.open_clip.tokenizer.tokenize([t("wood ") for t in corrclip.templates]))


@needs_corrclip
def test_query_embeddings_are_corrclips(corrclip, tmp_path):
    """``text.query_embeddings`` equals CorrCLIP's ``generate_category_embeddings`` on the model CorrCLIP
    builds from the same MetaCLIP file (float32; random full-size ViT-B/16 weights)."""
    name = "ViT-B-16-quickgelu/metaclip_fullcc"
    path = random_weights.write_clip(tmp_path / CLIP_SPECS[name].release_file, seed=2, arch=name)
    released = corrclip.open_clip.create_model("ViT-B-16-quickgelu", pretrained=str(path)).eval()
    ours = weights.load_clip(str(path))
    names = ["sky", "person in shirt", "aeroplane", "potted plant", "tv monitor"]
    expected = corrclip_category_embeddings(released, corrclip.open_clip.tokenizer.tokenize, corrclip.templates,
                                            names)
    got = text.query_embeddings(ours, names, cache_dir=False)
    assert got.shape == expected.shape == (5, 512)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # measured: 3.7e-8 (not bit-equal)


def corrclip_positions(vendored, positional_embedding, patch, height, width):
    """CorrCLIP's ``VisionTransformer.interpolate_pos_encoding`` called as its ``forward`` calls it
    (``(x, h, w)`` into parameters named ``(x, w, h)``), for a crop of ``height x width``."""
    tokens = 1 + (height // patch) * (width // patch)
    owner = SimpleNamespace(positional_embedding=positional_embedding, patch_size=(patch, patch))
    x = torch.zeros(1, tokens, positional_embedding.shape[-1])
    return vendored.transformer.VisionTransformer.interpolate_pos_encoding(owner, x, height, width)[0]


# crops of CorrCLIP's windows (336 slides, sides padded to multiples of 56) and other non-square ones
CROPS = [(336, 336), (336, 448), (448, 336), (392, 336), (336, 392), (448, 560), (224, 448), (336, 224)]


@needs_corrclip
@pytest.mark.parametrize("patch, side, width", [(16, 14, 768), (14, 16, 1024)])
def test_positional_resize_is_corrclips_bit_for_bit(corrclip, patch, side, width):
    torch.manual_seed(0)
    positional = torch.randn(1 + side * side, width) * 0.1
    for height, crop_width in CROPS:
        grid = (height // patch, crop_width // patch)
        expected = corrclip_positions(corrclip.open_clip, positional, patch, height, crop_width)
        got = clip_vit.resize_pos_embed(positional, grid)
        assert got.shape == expected.shape == (1 + grid[0] * grid[1], width)
        assert torch.equal(got, expected), (height, crop_width)


@needs_corrclip
def test_corrclip_keeps_the_square_grid_for_a_grid_of_as_many_patches(corrclip):
    """A quirk of the release, which we do not copy: its forward resizes only when the token count
    differs, so a 7 x 28 grid (112 x 448 crop, patch 16) gets the 14 x 14 embedding read row by row."""
    torch.manual_seed(0)
    positional = torch.randn(1 + 14 * 14, 768)
    assert 1 + 7 * 28 == positional.shape[0]  # forward then adds self.positional_embedding unchanged
    ours = clip_vit.resize_pos_embed(positional, (7, 28))
    assert ours.shape == positional.shape and not torch.allclose(ours, positional)
    resized = corrclip_positions(corrclip.open_clip, positional, 16, 112, 448)  # what it would resize to
    assert torch.equal(ours, resized)
