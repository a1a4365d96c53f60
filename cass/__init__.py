"""CASS: training-free open-vocabulary semantic segmentation (Kim et al., CVPR 2025).

The model (:class:`CASSModel`, :func:`build_model`, :class:`Segmenter`) needs
torch, torchvision, open_clip, timm, scipy, scikit-learn and scikit-image;
mmseg sees it through :mod:`cass.mmseg` (registered by the benchmark configs'
``custom_imports``).
"""
from .api import Segmentation, Segmenter
from .build import build_model
from .config import CASSConfig, ConfigError, OutputConfig, PrecisionConfig, SpectralConfig, TextConfig, WindowConfig
from .images import ImageError
from .model import CASSModel, Prediction, slide_windows
from .text import Vocabulary, VocabularyError, parse_vocabulary, read_class_file
from .weights import WeightsError

__all__ = ["CASSConfig", "CASSModel", "ConfigError", "ImageError", "OutputConfig", "Prediction", "PrecisionConfig",
           "Segmentation", "Segmenter", "SpectralConfig", "TextConfig", "Vocabulary", "VocabularyError",
           "WeightsError", "WindowConfig", "build_model", "parse_vocabulary", "read_class_file", "slide_windows"]
