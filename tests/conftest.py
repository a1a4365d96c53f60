"""Shared fixtures: tiny random CLIP/DINO models written in the release formats.

Tiny CLIP: ViT with patch 16, width 128 (2 heads of 64), 2 layers, 32-d output;
text tower width 64, 1 layer. Tiny DINO: timm ViT-B/8 layout with width 128,
2 heads, 2 layers. Both go through the same builders as the real models.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from cass.weights import build_vfm

TINY_VFM = dict(embed_dim=128, depth=2, num_heads=2)


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=128, patch_size=16, image_size=224),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                 quick_gelu=True)
    return model.eval()


def tiny_dino(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_vfm("dino_vitb8", **TINY_VFM)
    with torch.no_grad():  # timm zero-inits cls/pos tokens; give them content
        model.cls_token.normal_(std=0.5)
        model.pos_embed.normal_(std=0.5)
    return model


def write_clip_state_dict(path: Path, seed: int = 0) -> Path:
    """OpenAI key format, float16 like the released state dicts."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in tiny_clip(seed).state_dict().items()}
    torch.save(state, path)
    return path


def write_dino_checkpoint(path: Path, seed: int = 0, full: bool = False) -> Path:
    """DINO release layout: a plain state dict, or a training checkpoint with prefixes and a head."""
    state = tiny_dino(seed).state_dict()
    if full:
        teacher = {f"backbone.{k}": v for k, v in state.items()}
        teacher["head.mlp.0.weight"] = torch.zeros(4, 128)
        state = {"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()}, "epoch": 3}
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_clip_state_dict(root / "tiny_clip.pt")
    write_dino_checkpoint(root / "tiny_dino.pth")
    return root


@pytest.fixture()
def class_file(tmp_path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("background, sky, wall\ncat\ndog, puppy\ngrass\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """No test reads or writes the user's caches or reaches the network."""
    monkeypatch.setenv("CASS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CASS_WEIGHTS_DIR", str(tmp_path / "weights-cache"))

    def offline(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


def segmentor_cfg(weights_dir: Path, class_file: Path, **overrides) -> dict:
    cfg = dict(type="CASSSegmentor", clip_path=str(weights_dir / "tiny_clip.pt"),
               dino_path=str(weights_dir / "tiny_dino.pth"), vfm_overrides=TINY_VFM, name_path=str(class_file),
               global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.5, prob_thd=0.0)
    cfg.update(overrides)
    return cfg
