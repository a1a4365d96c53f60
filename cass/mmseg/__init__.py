"""mmseg adapter: the registered segmentor, the extra datasets, the metric and
the result writer, for ``eval.py``, ``eval_all.sh`` and the benchmark configs.

Importing it registers ``CASSSegmentor`` (alias ``CASS_segmentor``),
``CASSDataPreProcessor``, ``PascalVOC20Dataset``, ``COCOObjectDataset``,
``PerClassIoUMetric`` and ``SegResultWriter`` in mmseg's registries; the
configs do so through ``custom_imports=dict(imports=['cass.mmseg'])``.
The model itself (:mod:`cass.model`) needs none of this.
"""
from __future__ import annotations

try:
    import mmcv  # noqa: F401
    import mmengine  # noqa: F401
    import mmseg  # noqa: F401
except ImportError as err:
    raise ImportError(f"cass.mmseg needs mmcv 2.1.0, mmengine and mmsegmentation 1.2.2 ({err}); install them with "
                      "`bash scripts/setup.sh` (full profile) or `pip install -e .[mmseg]`") from None

from . import datasets, evaluation  # noqa: E402,F401 - registration
from .segmentor import CASSDataPreProcessor, CASSSegmentor  # noqa: E402

__all__ = ["CASSDataPreProcessor", "CASSSegmentor"]
