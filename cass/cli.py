"""Command-line flags shared by the entry points: the same names, defaults and help everywhere.

:func:`add_weights_arguments` defines the weights flags (``--clip-path``, ``--vfm-path``,
``--sam-path``) of every program (``eval.py``, ``demo.py``, ``app.py``, ``benchmark.py``);
:func:`add_model_arguments` adds the settings of the programs that build a model from a
benchmark config (``demo.py``, ``app.py``); :func:`add_protocol_argument` the choice between a
method's published settings and the config's (those two and ``eval.py``). Former spellings of
a flag stay accepted through :class:`DeprecatedAlias`, with a one-line warning.

torch is imported only when :func:`add_model_arguments` runs, so that ``eval.py`` can answer a
bad command line before loading it.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import PRECISIONS
from .benchmarks import PROTOCOL_NAMES

# Former spellings of the weights flags (old name -> new name) in eval.py, demo.py and app.py.
OLD_WEIGHTS_FLAGS: dict[str, str] = {"--dino-path": "--vfm-path"}


class DeprecatedAlias(argparse.Action):
    """A flag's former name: stores its value under the new flag's ``dest`` and prints one line,
    ``PROG: warning: --old is deprecated; use --new``, to stderr.

    Args:
        option_strings, dest: as for any :class:`argparse.Action` (``dest``: the new flag's).
        new: the flag's current name, for the warning and the help.
        **kwargs: the rest of :meth:`argparse.ArgumentParser.add_argument`'s arguments.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs.setdefault("default", argparse.SUPPRESS)  # the new flag's default stands
        kwargs.setdefault("help", f"deprecated: the old name of {new}")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_aliases(parser: argparse.ArgumentParser, old_names: Mapping[str, str]) -> None:
    """Add each old flag name of ``old_names`` (old -> new) as a :class:`DeprecatedAlias` of the new
    flag, storing under the ``dest`` argparse gives the new one (``--vfm-path``: ``vfm_path``)."""
    for old, new in old_names.items():
        parser.add_argument(old, action=DeprecatedAlias, dest=new.lstrip("-").replace("-", "_"), new=new)


def add_weights_arguments(parser: argparse.ArgumentParser, random_default: bool = False,
                          old_names: Mapping[str, str] = OLD_WEIGHTS_FLAGS) -> None:
    """``--clip-path``, ``--vfm-path``, ``--sam-path`` and ``--mask-path`` (``args.clip_path``, ...,
    ``args.mask_path``; None without the flag), and ``old_names`` as their deprecated aliases.

    Args:
        parser: the program's parser.
        random_default: without a flag the program uses random weights (``benchmark.py``, whose
            ``--clip`` and ``--vfm`` choose the towers) rather than the config's public ones; it
            only changes the help.
        old_names: former flag names, old -> new (default: :data:`OLD_WEIGHTS_FLAGS`).
    """
    if random_default:
        clip, vfm, default = "--clip", "--vfm", "default: random weights"
    else:
        clip, vfm, default = "the config's CLIP", "the config's VFM", "default: the public weights, downloaded once"
    parser.add_argument("--clip-path", default=None,
                        help=f"weights of {clip}: a local release file (OpenAI's ViT-B-16.pt, ...) or a public "
                             f"name such as ViT-B/16; {default}")
    parser.add_argument("--vfm-path", default=None,
                        help=f"local weights of {vfm} (DINO ViT-B/8: dino_vitbase8_pretrain.pth; DINOv2, DINOv3: "
                             f"docs/backbones.md); {default}")
    parser.add_argument("--sam-path", default=None,
                        help="local SAM weights of the config's sam_model_type, read where the method uses SAM "
                             f"(Trident: sam_vit_b_01ec64.pth); {default}")
    parser.add_argument("--mask-path", default=None,
                        help="local weights of the config's mask generator, read where the method uses region "
                             f"masks made by SAM2 (CorrCLIP: sam2_hiera_large.pt); {default}")
    add_deprecated_aliases(parser, old_names)


def add_protocol_argument(parser: argparse.ArgumentParser, default: str = "cass") -> None:
    """``--protocol {published,cass}`` (``args.protocol``): whose settings a method other than CASS runs
    with on a benchmark config (:func:`cass.api.protocol_cfg_options`, :func:`cass.protocols.protocol_options`).

    Args:
        parser: the program's parser.
        default: ``'cass'`` (``eval.py``, ``demo.py``: the config's settings, as before the flag
            existed) or ``'published'`` (``app.py``: each method's own).
    """
    parser.add_argument("--protocol", choices=PROTOCOL_NAMES, default=default,
                        help="'published': the method's (model.method) published settings for the config's "
                             "benchmark -- windows, stride, test resize, thresholds, class-name file "
                             "(cass/methods/) -- under --cfg-options, which win; 'cass': the config's "
                             f"settings, whatever the method; the same for CASS (default: {default})")


def add_model_arguments(parser: argparse.ArgumentParser, protocol: str = "cass") -> None:
    """``--config``, the weights flags of :func:`add_weights_arguments`, ``--device``, ``--precision``,
    ``--opacity``, ``--protocol`` (:func:`add_protocol_argument`, default ``protocol``) and
    ``--cfg-options`` (mmseg's ``model.key=value`` form)."""
    import torch  # for the default device; only here, see the module's docstring
    from mmengine.config import DictAction  # pure Python; imported with the parser

    parser.add_argument("--config", type=Path, default=None,
                        help="benchmark config for the settings (default: configs/cfg_ade20k.py)")
    add_weights_arguments(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="precision of every tower (default: the config's, 'auto': on CUDA CLIP fp16, "
                             "the VFM fp32 with TF32 and SAM's encoder fp16, like the released code; fp32 on the CPU)")
    parser.add_argument("--opacity", type=float, default=0.5, help="opacity of the class colours (0 to 1)")
    add_protocol_argument(parser, protocol)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, metavar="KEY=VALUE",
                        help="override config settings, mmseg style: model.prob_thd=0.1 model.slide_crop=0")


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``parser.error`` on a flag of :func:`add_model_arguments` out of range."""
    if not 0 <= args.opacity <= 1:
        parser.error(f"--opacity must lie in [0, 1], got {args.opacity}")
