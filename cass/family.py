"""The training-free family as registered parts: one entry per method (``docs/methods.md``).

Like timm's ``register_model`` table or segment-anything's ``sam_model_registry``,
each method is one :class:`Method` in :data:`METHODS`. An entry declares

* what it needs: a VFM (always, never, or depending on a setting), whether
  CASS-style one-to-one head pairing is needed, which positional embedding the
  VFM must have;
* its last block: a ``"module:function"`` reference, imported when a model
  first uses it (:mod:`cass.last_blocks` holds the family's);
* how crops become an image (``merge``: crop logits averaged over windows,
  or crop features spliced into one grid of the image, Trident's way);
* whether SAM helps by default (``sam_aggregation``, ``sam_refinement``);
* its published defaults (residual and feed-forward network, text refinement);
* its published per-benchmark settings, class-name files included
  (:func:`cfg_options`), and its published mIoU with their source.

The model (:class:`cass.model.CASSModel`) runs the shared pipeline and asks
the entry; it names no method. This module is standard library only and
imports nothing from :mod:`cass` (:mod:`cass.config` imports it), so that
``eval_all.sh``, ``configs/methods.py`` and ``cass/summary.py`` read it
without importing torch.

Adding a method (``docs/architecture.md`` has a worked example)::

    register_method(Method(name="mine", title="Mine (2026)", last_block="my_package.blocks:mine_features"))
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"

# Benchmark config -> column name, in the paper's column order (every table of the project reads this one).
BENCHMARKS: dict[str, str] = {
    "cfg_voc21": "VOC21",
    "cfg_context60": "PC60",
    "cfg_coco_object": "COCO-Obj",
    "cfg_voc20": "VOC20",
    "cfg_context59": "PC59",
    "cfg_coco_stuff164k": "COCO-Stuff",
    "cfg_city_scapes": "Cityscapes",
    "cfg_ade20k": "ADE20K",
}
# The Resize step of every benchmark's test pipeline (configs/_base_/datasets: step 1).
RESIZE_KEY = "test_dataloader.dataset.pipeline.1.scale"
# How crops become an image, the family's own merge steps (cass.merges.MERGE_STEPS): "logits" averages the
# crops' logits over the windows; "features" splices the crops' features (before CLIP's ln_post and proj)
# into one token grid of the image (Trident). cass.merges.register_merge_step adds others.
MERGES = ("logits", "features")
PROTOCOL_NAMES = ("published", "cass")


def _never(config: Any) -> bool:
    return False


def _always(config: Any) -> bool:
    return True


@dataclass(frozen=True)
class Method:
    """One method of the family.

    Attributes:
        name: the config key ``method``.
        title: paper, authors, venue (for tables and errors).
        last_block: ``"module:function"`` of its last block; the function takes
            ``(ctx, crops, tokens, grid)`` -- a :class:`~cass.method_context.MethodContext`
            (the towers, the settings, the precision contexts; not the model),
            (B, 3, Hc, Wc) crops, (B, 1 + N, D) CLIP tokens entering the last
            block, CLIP's patch grid -- and returns (B, M, E) L2-normalised
            float32 patch features and their grid. With ``merge='features'``
            the crops are all the windows of one image and it returns their
            (K, C, h, w) features before ``ln_post`` and ``proj`` and the
            factor ``ratio`` between their grid and CLIP's
            (:func:`cass.trident.splice_crops`).
        needs_vfm: whether a configuration (:class:`~cass.config.CASSConfig`)
            of this method uses a VFM.
        pairs_heads: the VFM's last block must have as many heads as CLIP's.
        vfm_positions: ``"any"``, or ``"absolute"`` when the VFM must have an
            absolute positional embedding (no RoPE;
            :func:`cass.tower_checks.check_absolute_positions`).
        merge: how crops become an image: a name of :data:`cass.merges.MERGE_STEPS`
            (the family's :data:`MERGES`, or one added by ``register_merge_step``),
            checked when a model is built.
        sam_aggregation: SAM's correlation aggregates the image by default.
        sam_refinement: SAM refines the prediction by default.
        residual: the published last block keeps the residual and the
            feed-forward network; None: the method has no such variant.
        refines_text: CASS's object-presence text refinement is on by default.
        protocol: per benchmark config, the published run's settings as model
            keys, plus ``short_side`` (the test resize) and ``class_file``
            (a class-name file under ``configs/``) where they differ from CASS's.
        published: per benchmark config, the published mIoU (None: not found),
            with CLIP ViT-B/16.
        published_with: other CLIP backbones' published rows (``clip_path`` -> row).
        source: where ``published`` comes from.
    """

    name: str
    title: str
    last_block: str
    needs_vfm: Callable[[Any], bool] = _never
    pairs_heads: bool = False
    vfm_positions: str = "any"
    merge: str = "logits"
    sam_aggregation: bool = False
    sam_refinement: bool = False
    residual: bool | None = None
    refines_text: bool = False
    protocol: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    published: Mapping[str, float | None] = field(default_factory=dict)
    published_with: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    source: str = "not published"

    def __post_init__(self) -> None:
        if not (isinstance(self.merge, str) and self.merge.isidentifier()):
            raise ValueError(f"method {self.name!r}: merge must name a merge step, got {self.merge!r}")
        if self.vfm_positions not in ("any", "absolute"):
            raise ValueError(f"method {self.name!r}: vfm_positions must be 'any' or 'absolute'")
        unknown = (set(self.protocol) | set(self.published)
                   | {b for row in self.published_with.values() for b in row}) - set(BENCHMARKS)
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown benchmarks {sorted(unknown)}")

    def block(self) -> Callable:
        """The last-block function (imported on first use)."""
        module, _, function = self.last_block.partition(":")
        return getattr(importlib.import_module(module), function)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to :data:`METHODS` (a name is registered once)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The entry of ``name``; an unknown name is a one-line ``KeyError``."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    return METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def _table(base: Mapping[str, Any], **changes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{config: settings}``: ``base`` for every benchmark, updated by ``changes[short name]``."""
    unknown = set(changes) - {b.removeprefix("cfg_") for b in BENCHMARKS}
    if unknown:
        raise KeyError(f"unknown benchmarks {sorted(unknown)}")
    return {b: {**base, **changes.get(b.removeprefix("cfg_"), {})} for b in BENCHMARKS}


def _row(*values: float | None) -> dict[str, float | None]:
    return dict(zip(BENCHMARKS, values))


# ------------------------------------------------------------------ the family
# Published settings come from each method's released configs (wangf3014/SCLIP, sinahmr/NACLIP,
# mc-lan/ClearCLIP, mc-lan/ProxyCLIP); published mIoU (CLIP ViT-B/16, no PAMR) are the rows CASS's
# Table 1 compares with; docs/methods.md says how each was checked.

# SCLIP's configs: 224 windows, stride 112, short side 336 (448 COCO-Stuff, 560 Cityscapes), logit scale 40.
_SCLIP_BASE = dict(slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0, short_side=336)
_SCLIP_SIZES = dict(coco_stuff164k=dict(short_side=448), city_scapes=dict(short_side=560))
# CLIP and MaskCLIP as SCLIP re-ran them (its Table 1): SCLIP's windows and sizes are assumed,
# with the usual background threshold and without SCLIP's own tuning.
_REFERENCE_RERUN = _table(_SCLIP_BASE, voc21=dict(prob_thd=0.1), context60=dict(prob_thd=0.1),
                          coco_object=dict(prob_thd=0.1), **_SCLIP_SIZES)
# ClearCLIP's and ProxyCLIP's own class-name files where they differ from SCLIP's (configs/<method>/).
_OWN_CLASS_FILES = ("voc21", "voc20", "coco_object")


def _class_files(method: str) -> dict[str, dict[str, str]]:
    return {b: dict(class_file=f"{method}/cls_{b}.txt") for b in _OWN_CLASS_FILES}


def _merge(table: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {b: {**settings, **extra.get(b.removeprefix("cfg_"), {})} for b, settings in table.items()}


register_method(Method(
    name="cass", title="CASS (Kim et al., CVPR 2025)", last_block="cass.last_blocks:cass_features",
    needs_vfm=lambda config: config.spectral.attn_strategy != "vanilla", pairs_heads=True, refines_text=True,
    protocol={b: {} for b in BENCHMARKS},  # the benchmark configs themselves
    published=_row(65.8, 36.7, 37.8, 87.8, 40.2, 26.7, 39.4, 20.4),
    source="CASS paper (Kim et al., CVPR 2025), Table 1"))
register_method(Method(
    name="clip", title="CLIP (Radford et al., ICML 2021)", last_block="cass.last_blocks:clip_features",
    residual=True, protocol=_REFERENCE_RERUN,
    published=_row(18.8, 9.9, 8.1, 49.4, 11.1, 5.7, 6.5, 3.1),
    source="SCLIP paper (Wang et al., ECCV 2024), Table 1, its re-run of CLIP"))
register_method(Method(
    name="maskclip", title="MaskCLIP (Zhou et al., ECCV 2022)", last_block="cass.last_blocks:maskclip_features",
    residual=True, protocol=_REFERENCE_RERUN,
    published=_row(43.4, 23.2, 20.6, 74.9, 26.4, 16.7, 24.9, 11.9),
    source="SCLIP paper (Wang et al., ECCV 2024), Table 1, its re-run of MaskCLIP"))
register_method(Method(
    name="sclip", title="SCLIP (Wang et al., ECCV 2024)", last_block="cass.last_blocks:sclip_features",
    residual=True,
    protocol=_table(_SCLIP_BASE, voc21=dict(logit_scale=65, prob_thd=0.1, area_thd=0.1),
                    context60=dict(logit_scale=50, prob_thd=0.1), coco_object=dict(logit_scale=50, prob_thd=0.1),
                    **_SCLIP_SIZES),
    published=_row(59.1, 30.4, 30.5, 80.4, 34.2, 22.4, 32.2, 16.1),
    source="SCLIP paper (Wang et al., ECCV 2024), Table 1"))
register_method(Method(
    name="clearclip", title="ClearCLIP (Lan et al., ECCV 2024)", last_block="cass.last_blocks:clearclip_features",
    residual=False,
    # 448 windows, stride 224, short side 448, logit scale 50; its own VOC and COCO-Object class files
    protocol=_merge(_table(dict(slide_crop=448, slide_stride=224, logit_scale=50, prob_thd=0.0, area_thd=0.0,
                                short_side=448),
                           voc21=dict(prob_thd=0.5), context60=dict(prob_thd=0.15), coco_object=dict(prob_thd=0.4),
                           city_scapes=dict(slide_crop=224)), _class_files("clearclip")),
    published=_row(51.8, 32.6, 33.0, 80.9, 35.9, 23.9, 30.0, 16.7),
    source="ClearCLIP paper (Lan et al., ECCV 2024), Table 1, ViT-B/16"))
register_method(Method(
    name="naclip", title="NACLIP (Hajimiri et al., WACV 2025)", last_block="cass.last_blocks:naclip_features",
    residual=False,
    # SCLIP's windows, whole image on VOC21/VOC20, sigma 5, no PAMR for the compared numbers
    protocol=_table(dict(slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0,
                         gaussian_std=5.0, short_side=336),
                    voc21=dict(slide_crop=0, prob_thd=0.1), voc20=dict(slide_crop=0),
                    context60=dict(prob_thd=0.1), coco_object=dict(prob_thd=0.1), city_scapes=dict(short_side=560)),
    published=_row(58.9, 32.2, 33.2, 79.7, 35.2, 23.3, 35.5, 17.4),
    source="NACLIP paper (Hajimiri et al., WACV 2025), main table, without post-processing"))
register_method(Method(
    name="proxyclip", title="ProxyCLIP (Lan et al., ECCV 2024)", last_block="cass.last_blocks:proxyclip_features",
    needs_vfm=_always, vfm_positions="absolute",
    # 336 windows, stride 112, beta 1.2, gamma 3.0 with DINO ViT-B/8 (its default VFM); its own class files
    protocol=_merge(_table(dict(slide_crop=336, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0,
                                proxy_beta=1.2, proxy_gamma=3.0, vfm="dino_vitb8", short_side=336),
                           voc21=dict(prob_thd=0.2), context60=dict(prob_thd=0.15), coco_object=dict(prob_thd=0.25),
                           ade20k=dict(short_side=448), city_scapes=dict(short_side=448, slide_crop=224)),
                    _class_files("proxyclip")),
    published=_row(None, None, None, None, None, None, None, None),
    source="not found per benchmark (two sources disagree; CASS's Table 1 gives the average, 41.4)"))
register_method(Method(
    name="trident", title="Trident (Shi et al., ICCV 2025)", last_block="cass.last_blocks:trident_features",
    needs_vfm=_always, vfm_positions="absolute", merge="features", sam_aggregation=True, sam_refinement=True,
    # YuHengsss/Trident configs: 336 windows, stride 224 (112 VOC20), ProxyCLIP's beta 1.2 and gamma 3.0 over
    # DINO ViT-B/16, SAM vit_b, predicted-IoU threshold 0.8; ProxyCLIP's VOC and COCO-Object class files
    protocol=_merge(_table(dict(slide_crop=336, slide_stride=224, logit_scale=40, prob_thd=0.0, area_thd=0.0,
                                proxy_beta=1.2, proxy_gamma=3.0, vfm="dino_vitb16", sam_model_type="vit_b",
                                cos_fac=1.2, refine_neg_cos=True, sam_halves=False, coarse_thresh=0.2,
                                minimal_area=225, sam_mask_coff=0.005, sam_iou_thresh=0.8, short_side=448),
                           voc21=dict(prob_thd=0.2), context60=dict(prob_thd=0.15, coarse_thresh=0.15, short_side=576),
                           coco_object=dict(prob_thd=0.25, coarse_thresh=0.25),
                           voc20=dict(slide_stride=112, cos_fac=0.0, short_side=336),
                           context59=dict(coarse_thresh=0.15, short_side=576), coco_stuff164k=dict(coarse_thresh=0.05),
                           city_scapes=dict(cos_fac=3.0, refine_neg_cos=False, coarse_thresh=0.1, sam_halves=True,
                                            short_side=688),
                           ade20k=dict(refine_neg_cos=False, coarse_thresh=0.05, short_side=576)),
                    {b: dict(class_file=f"proxyclip/cls_{b}.txt") for b in _OWN_CLASS_FILES}),
    published=_row(67.1, 38.6, 41.1, 84.5, 42.2, 28.3, 42.9, 21.9),
    published_with={"ViT-H-14/laion2b_s32b_b79k": _row(70.8, 40.1, 42.2, 88.7, 44.3, 28.6, 47.6, 26.7)},
    source="Trident paper (Shi et al., ICCV 2025), Table 1 (YuHengsss/Trident assets/data_result.png), "
           "with SAM refinement"))


# ------------------------------------------------------------------ protocols
def cfg_options(method: str, benchmark: str, protocol: str = "published") -> list[str]:
    """``key=value`` overrides for ``eval.py --cfg-options``.

    The method, and with ``protocol='published'`` its published settings on
    ``benchmark`` (a config name such as ``cfg_voc21``): model keys, the test
    resize and, where the method ships its own, the class-name file (an
    absolute path). ``protocol='cass'`` keeps the benchmark config's settings.
    :func:`protocol_options` gives the same overrides with their values.
    """
    get_method(method)
    if benchmark not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {benchmark!r}; benchmarks: {', '.join(BENCHMARKS)}")
    return [f"{key}={_option_text(value)}" for key, value in protocol_options(method, benchmark, protocol).items()]


def protocol_options(method: str, config: str | os.PathLike, protocol: str = "published") -> dict[str, Any]:
    """:func:`cfg_options` as a mapping with typed values, for a benchmark config file or name.

    What every entry point (``eval.py``, :class:`cass.api.Segmenter`,
    ``demo.py``, the web app) merges into the config before the user's
    explicit ``--cfg-options``, which win. The benchmark is the config's file
    name (``configs/cfg_voc21.py``: ``cfg_voc21``). A config that is none of
    :data:`BENCHMARKS` has no published settings: it takes ``protocol='cass'``,
    and ``'published'`` for a method that publishes none (CASS: its protocol
    is the config itself); otherwise a one-line ``KeyError``.
    """
    entry = get_method(method)
    if protocol not in PROTOCOL_NAMES:
        raise KeyError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOL_NAMES)}")
    options: dict[str, Any] = {} if method == "cass" else {"model.method": method}
    if protocol == "cass":
        return options
    benchmark = Path(config).stem
    if benchmark not in BENCHMARKS and any(entry.protocol.values()):
        raise KeyError(f"protocol 'published': {benchmark} is not a benchmark config ({', '.join(BENCHMARKS)}), "
                       f"so {method} has no published settings for it; use protocol 'cass' (the config's own)")
    settings = dict(entry.protocol.get(benchmark, {}))
    short_side = settings.pop("short_side", None)
    class_file = settings.pop("class_file", None)
    options.update({f"model.{key}": value for key, value in settings.items()})
    if class_file is not None:
        options["model.name_path"] = str(CONFIGS_DIR / class_file)
    if short_side is not None:
        options[RESIZE_KEY] = (2048, short_side)
    return options


def _option_text(value: Any) -> str:
    """A value as ``--cfg-options`` writes it (mmengine's ``DictAction`` reads it back): tuples ``(a,b)``."""
    return f"({','.join(map(str, value))})" if isinstance(value, tuple) else str(value)


# ------------------------------------------------------------------ what a configuration needs
@dataclass(frozen=True)
class Requirements:
    """What a configuration needs of its towers (:func:`requirements`).

    Attributes:
        vfm: a VFM is used.
        paired_heads: the VFM's last block must have as many heads as CLIP's.
        vfm_positions: ``"any"`` or ``"absolute"`` (no rotary embedding).
        sam: SAM is used (aggregation or refinement).
    """

    vfm: bool
    paired_heads: bool
    vfm_positions: str
    sam: bool = False


def requirements(config: Any) -> Requirements:
    """What a :class:`~cass.config.CASSConfig` needs: asked by the builder before
    any weight is read, and by the model when it is assembled; the towers
    themselves are checked against it by :func:`cass.tower_checks.check_towers`."""
    method = get_method(config.method.name)
    vfm = bool(method.needs_vfm(config))
    return Requirements(vfm=vfm, paired_heads=vfm and method.pairs_heads,
                        vfm_positions=method.vfm_positions if vfm else "any",
                        sam=config.sam_aggregates or config.sam_refines)

