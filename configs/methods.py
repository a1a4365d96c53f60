"""Published evaluation protocol of each method on each benchmark (``docs/methods.md``).

The benchmark configs hold CASS's protocol. The baselines were published with
their own windows, resize, logit scale and background threshold; this table
gives, per method and benchmark config, the settings of the published run,
as ``eval.py --cfg-options`` overrides::

    python configs/methods.py sclip cfg_voc21     # one override per line
    bash eval_all.sh --method sclip               # applies them (--protocol cass: CASS's settings for all)

Values come from each method's released configs (wangf3014/SCLIP,
sinahmr/NACLIP, mc-lan/ClearCLIP, mc-lan/ProxyCLIP). Standard library only:
``eval_all.sh`` reads it without importing torch.
"""
from __future__ import annotations

import sys

BENCHMARKS = ("cfg_voc21", "cfg_context60", "cfg_coco_object", "cfg_voc20", "cfg_context59",
              "cfg_coco_stuff164k", "cfg_city_scapes", "cfg_ade20k")
# The Resize step of every benchmark's test pipeline (configs/_base_/datasets: step 1).
RESIZE_KEY = "test_dataloader.dataset.pipeline.1.scale"


def _table(base: dict, **changes: dict) -> dict[str, dict]:
    """``{config: settings}``: ``base`` for every benchmark, updated by ``changes[name]``."""
    unknown = set(changes) - {b[len("cfg_"):] for b in BENCHMARKS}
    if unknown:
        raise KeyError(f"unknown benchmarks {sorted(unknown)}")
    return {b: {**base, **changes.get(b[len("cfg_"):], {})} for b in BENCHMARKS}


# SCLIP's configs: 224 windows, stride 112, short side 336 (448 COCO-Stuff, 560 Cityscapes),
# logit scale 40 with per-benchmark changes, and its small-region filter on VOC21.
_SCLIP_BASE = dict(slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0, short_side=336)
_SCLIP_SIZES = dict(coco_stuff164k=dict(short_side=448), city_scapes=dict(short_side=560))
# CLIP and MaskCLIP as SCLIP re-ran them (its Table 1): SCLIP's windows and sizes are
# assumed, with the usual background threshold and without SCLIP's own tuning.
_REFERENCE_RERUN = _table(_SCLIP_BASE, voc21=dict(prob_thd=0.1), context60=dict(prob_thd=0.1),
                          coco_object=dict(prob_thd=0.1), **_SCLIP_SIZES)

PROTOCOLS: dict[str, dict[str, dict]] = {
    "cass": {b: {} for b in BENCHMARKS},  # the benchmark configs themselves
    "clip": _REFERENCE_RERUN,
    "maskclip": _REFERENCE_RERUN,
    "sclip": _table(_SCLIP_BASE, voc21=dict(logit_scale=65, prob_thd=0.1, area_thd=0.1),
                    context60=dict(logit_scale=50, prob_thd=0.1), coco_object=dict(logit_scale=50, prob_thd=0.1),
                    **_SCLIP_SIZES),
    # NACLIP: SCLIP's windows, whole image on VOC21/VOC20, sigma 5, no PAMR for the compared numbers.
    "naclip": _table(dict(slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0,
                          gaussian_std=5.0, short_side=336),
                     voc21=dict(slide_crop=0, prob_thd=0.1), voc20=dict(slide_crop=0),
                     context60=dict(prob_thd=0.1), coco_object=dict(prob_thd=0.1),
                     city_scapes=dict(short_side=560)),
    # ClearCLIP: 448 windows, stride 224, short side 448, logit scale 50.
    "clearclip": _table(dict(slide_crop=448, slide_stride=224, logit_scale=50, prob_thd=0.0, area_thd=0.0,
                             short_side=448),
                        voc21=dict(prob_thd=0.5), context60=dict(prob_thd=0.15), coco_object=dict(prob_thd=0.4),
                        city_scapes=dict(slide_crop=224)),
    # ProxyCLIP: 336 windows, stride 112, beta 1.2, gamma 3.0 with DINO ViT-B/8 (its default VFM).
    "proxyclip": _table(dict(slide_crop=336, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0,
                             proxy_beta=1.2, proxy_gamma=3.0, vfm="dino_vitb8", short_side=336),
                        voc21=dict(prob_thd=0.2), context60=dict(prob_thd=0.15), coco_object=dict(prob_thd=0.25),
                        ade20k=dict(short_side=448), city_scapes=dict(short_side=448, slide_crop=224)),
}


def cfg_options(method: str, benchmark: str, protocol: str = "published") -> list[str]:
    """``key=value`` overrides for ``eval.py --cfg-options``: the method, and with
    ``protocol='published'`` its published settings on ``benchmark`` (a config name
    such as ``cfg_voc21``); ``protocol='cass'`` keeps the benchmark config's settings."""
    if method not in PROTOCOLS:
        raise KeyError(f"unknown method {method!r}; methods: {', '.join(PROTOCOLS)}")
    if benchmark not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {benchmark!r}; benchmarks: {', '.join(BENCHMARKS)}")
    if protocol not in ("published", "cass"):
        raise KeyError(f"unknown protocol {protocol!r}; protocols: published, cass")
    options = [] if method == "cass" else [f"model.method={method}"]
    if protocol == "cass":
        return options
    settings = dict(PROTOCOLS[method][benchmark])
    short_side = settings.pop("short_side", None)
    options += [f"model.{key}={value}" for key, value in settings.items()]
    if short_side is not None:
        options.append(f"{RESIZE_KEY}=(2048,{short_side})")
    return options


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python configs/methods.py METHOD BENCHMARK [published|cass]", file=sys.stderr)
        return 2
    try:
        print("\n".join(cfg_options(*argv)))
    except KeyError as err:
        print(f"methods.py: {err.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
