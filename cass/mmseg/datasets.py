"""Benchmark datasets that mmseg 1.2.2 lacks, registered in mmseg's ``DATASETS``.

The open-vocabulary protocol (GroupViT, TCL, SCLIP, CASS) evaluates two
variants that mmseg does not ship:

- ``PascalVOC20Dataset``: Pascal VOC 2012 without the background class. The
  label files are VOC's own; ``reduce_zero_label`` turns background (0) into
  the ignore index and shifts the 20 objects to 0..19.
- ``COCOObjectDataset``: background + the 80 COCO things, read from the
  ``*_instanceTrainIds.png`` label maps that ``datasets/cvt_coco_object.py``
  derives from COCO-Stuff164k (every stuff and unlabeled pixel is background).

The Pascal Context benchmarks use mmseg's own ``PascalContextDataset`` (60
classes, background included) and ``PascalContextDataset59`` (background
ignored): their classes and label handling are already the protocol's.
"""
from __future__ import annotations

from mmseg.datasets import BaseSegDataset, COCOStuffDataset, PascalVOCDataset
from mmseg.registry import DATASETS

__all__ = ["COCOObjectDataset", "PascalVOC20Dataset"]


@DATASETS.register_module()
class PascalVOC20Dataset(PascalVOCDataset):
    """Pascal VOC 2012 without background: 20 object classes, background ignored.

    Same files as :class:`mmseg.datasets.PascalVOCDataset` (``JPEGImages``,
    ``SegmentationClass``, a split file). ``reduce_zero_label=True`` maps label
    0 to the ignore index 255 and class ``k`` to ``k - 1``.
    """

    METAINFO = dict(classes=PascalVOCDataset.METAINFO["classes"][1:],
                    palette=PascalVOCDataset.METAINFO["palette"][1:])

    def __init__(self, ann_file: str, img_suffix: str = ".jpg", seg_map_suffix: str = ".png",
                 reduce_zero_label: bool = True, **kwargs) -> None:
        super().__init__(ann_file=ann_file, img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)


@DATASETS.register_module()
class COCOObjectDataset(BaseSegDataset):
    """COCO-Object: background (0) + the 80 COCO things (1..80), COCO-Stuff order.

    Images ``images/val2017/*.jpg``; labels
    ``annotations/val2017/*_instanceTrainIds.png`` written by
    ``datasets/cvt_coco_object.py``. Nothing is ignored: the conversion maps
    stuff and unlabeled pixels to background.
    """

    METAINFO = dict(classes=("background", *COCOStuffDataset.METAINFO["classes"][:80]),
                    palette=[[0, 0, 0], *COCOStuffDataset.METAINFO["palette"][:80]])

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = "_instanceTrainIds.png",
                 reduce_zero_label: bool = False, **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
