"""Command-line flags shared by the programs that build a model from a benchmark config
(``demo.py``, ``app.py``): the same names, defaults and help everywhere."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .config import PRECISIONS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--clip-path``, ``--vfm-path`` (``--dino-path``), ``--device``, ``--precision``,
    ``--opacity`` and ``--cfg-options`` (mmseg's ``model.key=value`` form)."""
    from mmengine.config import DictAction  # pure Python; imported with the parser

    parser.add_argument("--config", type=Path, default=None,
                        help="benchmark config for the settings (default: configs/cfg_ade20k.py)")
    parser.add_argument("--clip-path", default=None,
                        help="local weights of the config's CLIP (OpenAI ViT-B-16.pt); default: downloaded once")
    parser.add_argument("--vfm-path", "--dino-path", dest="vfm_path", default=None,
                        help="local weights of the config's VFM (DINO ViT-B/8: dino_vitbase8_pretrain.pth; "
                             "DINOv2, DINOv3: docs/backbones.md); default: downloaded once. "
                             "--dino-path is its old name")
    parser.add_argument("--sam-path", default=None,
                        help="local SAM weights where the method uses SAM (Trident: sam_vit_b_01ec64.pth); "
                             "default: downloaded once")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="precision of both towers (default: the config's, 'auto': on CUDA CLIP fp16 and "
                             "the VFM fp32 with TF32, like the released code; fp32 on the CPU)")
    parser.add_argument("--opacity", type=float, default=0.5, help="opacity of the class colours (0 to 1)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, metavar="KEY=VALUE",
                        help="override config settings, mmseg style: model.prob_thd=0.1 model.slide_crop=0")


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``parser.error`` on a flag of :func:`add_model_arguments` out of range."""
    if not 0 <= args.opacity <= 1:
        parser.error(f"--opacity must lie in [0, 1], got {args.opacity}")
