"""CASS: training-free open-vocabulary semantic segmentation (Kim et al., CVPR 2025).

Importing the package registers the segmentor and its data pre-processor in
mmseg's ``MODELS`` (configs use ``custom_imports=dict(imports=['cass'])``).
"""
from . import datasets  # registers the benchmark datasets mmseg lacks
from .api import ImageError, Segmentation, Segmenter
from .segmentor import CASSDataPreProcessor, CASSSegmentor, slide_windows
from .text import VocabularyError, parse_vocabulary, read_class_file
from .weights import WeightsError

__all__ = ["CASSDataPreProcessor", "CASSSegmentor", "ImageError", "Segmentation", "Segmenter", "VocabularyError",
           "WeightsError", "parse_vocabulary", "read_class_file", "slide_windows"]
