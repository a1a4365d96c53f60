"""The registry of the training-free family: one :class:`Method` entry per method (``docs/methods.md``).

Like timm's ``register_model`` table or segment-anything's
``sam_model_registry``, each method is one :class:`Method` in :data:`METHODS`,
registered by its own module of :mod:`cass.methods` (or by a module outside
the package: ``docs/architecture.md`` has a worked example). An entry
declares what the method needs of the towers, its pass through them (its
last block), how its crops become an image, whether SAM helps by default, its
own settings (a frozen dataclass with its published defaults) and its
published protocol and numbers. The model (:class:`cass.model.CASSModel`)
runs the shared pipeline and asks the entry; it names no method.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..benchmarks import BENCHMARKS


def _never(config: Any) -> bool:
    return False


def always(config: Any) -> bool:
    """``needs_vfm`` of a method that always uses its VFM."""
    return True


@dataclass(frozen=True)
class Method:
    """One method of the family.

    Attributes:
        name: the config key ``method``.
        title: paper, authors, venue (for tables and errors).
        last_block: its pass through the last block: a function, or a
            ``"module:function"`` reference imported on first use; None for a
            method whose merge step runs the towers itself (CorrCLIP). It takes
            ``(ctx, crops, tokens, grid)`` -- a
            :class:`~cass.method_context.MethodContext` (the towers, the
            settings, the method's own settings, the precision contexts; not
            the model), (B, 3, Hc, Wc) crops, (B, 1 + N, D) CLIP tokens
            entering the last block, CLIP's patch grid -- and returns (B, M, E)
            L2-normalised float32 patch features and their grid. With
            ``merge='features'`` the crops are all the windows of one image and
            it returns their (K, C, h, w) features before ``ln_post`` and
            ``proj`` and the factor ``ratio`` between their grid and CLIP's
            (:func:`cass.windows.splice_crops`).
        settings: the method's own settings: a frozen dataclass whose fields
            are config keys with the published defaults, validated in its
            ``__post_init__`` (None: the method has none).
        needs_vfm: whether a configuration (:class:`~cass.config.CASSConfig`)
            of this method uses a VFM.
        pairs_heads: the VFM's last block must have as many heads as CLIP's.
        vfm_positions: ``"any"``, or ``"absolute"`` when the VFM must have an
            absolute positional embedding (no RoPE;
            :func:`cass.tower_checks.check_absolute_positions`).
        merge: how crops become an image: a name of :data:`cass.merges.MERGE_STEPS`
            (``"logits"``: averaged over the windows; ``"features"``: spliced
            into one grid, Trident's way; or one added by
            ``register_merge_step``), checked when a model is built.
        regions: its pass needs the image's region masks (a mask generator's,
            :mod:`cass.masks`, or given): its merge step receives them.
        region_vote: each region of the masks takes its majority class after
            post-processing, by default (``region_vote``: an option of every method).
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
    last_block: str | Callable | None
    settings: type | None = None
    needs_vfm: Callable[[Any], bool] = _never
    pairs_heads: bool = False
    vfm_positions: str = "any"
    merge: str = "logits"
    sam_aggregation: bool = False
    sam_refinement: bool = False
    regions: bool = False
    region_vote: bool = False
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
        if self.settings is not None and not (dataclasses.is_dataclass(self.settings)
                                              and self.settings.__dataclass_params__.frozen):
            raise ValueError(f"method {self.name!r}: settings must be a frozen dataclass, got {self.settings!r}")
        unknown = (set(self.protocol) | set(self.published)
                   | {b for row in self.published_with.values() for b in row}) - set(BENCHMARKS)
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown benchmarks {sorted(unknown)}")

    def block(self) -> Callable | None:
        """The last-block function (a reference is imported on first use)."""
        if self.last_block is None or callable(self.last_block):
            return self.last_block
        module, _, function = self.last_block.partition(":")
        return getattr(importlib.import_module(module), function)

    def setting_names(self) -> tuple[str, ...]:
        """The config keys of the method's own settings."""
        return () if self.settings is None else tuple(f.name for f in dataclasses.fields(self.settings))


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


# ------------------------------------------------------------------ what a configuration needs
@dataclass(frozen=True)
class Requirements:
    """What a configuration needs of its towers (:func:`requirements`).

    Attributes:
        vfm: a VFM is used.
        paired_heads: the VFM's last block must have as many heads as CLIP's.
        vfm_positions: ``"any"`` or ``"absolute"`` (no rotary embedding).
        sam: SAM is used (aggregation or refinement).
        masks: region masks are used (the method's pass, or the vote).
    """

    vfm: bool
    paired_heads: bool
    vfm_positions: str
    sam: bool = False
    masks: bool = False


def requirements(config: Any) -> Requirements:
    """What a :class:`~cass.config.CASSConfig` needs: asked by the builder before
    any weight is read, and by the model when it is assembled; the towers
    themselves are checked against it by :func:`cass.tower_checks.check_towers`."""
    method = get_method(config.method.name)
    vfm = bool(method.needs_vfm(config))
    return Requirements(vfm=vfm, paired_heads=vfm and method.pairs_heads,
                        vfm_positions=method.vfm_positions if vfm else "any",
                        sam=config.sam_aggregates or config.sam_refines,
                        masks=method.regions or config.region_votes)
