"""``CASSSegmentor``: the CASS model as an mmseg segmentor (registry, runner, metrics).

A thin adapter: it builds a :class:`~cass.model.CASSModel` from the config
keys of the released configs (:func:`cass.build.build_model`), crops each
padded input to its ``img_shape`` and writes the model's predictions into
mmseg's data samples. Nothing of the method lives here.
"""
from __future__ import annotations

import mmcv
import numpy as np
import torch
from mmengine.structures import PixelData
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import stack_batch
from torch import Tensor

from ..build import build_model
from ..constants import CLIP_MEAN, CLIP_STD
from ..model import CASSModel
from .evaluation import prediction_path, read_prediction


@MODELS.register_module()
class CASSDataPreProcessor(SegDataPreProcessor):
    """mmseg's pre-processor, except that a test batch of different image sizes
    is zero-padded to the largest one (mmseg asserts equal sizes). The
    segmentor reads each image's own ``img_shape`` and ignores the padding."""

    def forward(self, data: dict, training: bool = False) -> dict:
        if training or self.test_cfg or len({tuple(i.shape[1:]) for i in data["inputs"]}) == 1:
            return super().forward(data, training)
        data = self.cast_data(data)
        inputs = [i[[2, 1, 0]] if self.channel_conversion and i.shape[0] == 3 else i for i in data["inputs"]]
        inputs = [(i.float() - self.mean) / self.std for i in inputs]
        batch, _ = stack_batch(inputs, size_divisor=1, pad_val=self.pad_val)
        return dict(inputs=batch, data_samples=data.get("data_samples"))


@MODELS.register_module(name=["CASSSegmentor", "CASS_segmentor"])
class CASSSegmentor(BaseSegmentor):
    """Training-free open-vocabulary segmentor CASS (Kim et al., CVPR 2025).

    Args:
        data_preprocessor: mmseg pre-processor config; default: CLIP's
            normalisation, BGR -> RGB, mixed sizes padded.
        init_cfg: unused (no training).
        saved_predictions: a folder of predictions written by an earlier,
            interrupted run (``eval.py --resume``): an image whose prediction
            is there is not segmented again, its saved labels are used.
        **model_keys: the released configs' model keys, passed to
            :func:`cass.build.build_model` (``clip_path``, ``name_path``,
            ``global_semantics_weight``, ``slide_crop``, ...; see
            :class:`cass.config.CASSConfig` for every setting).
    """

    def __init__(self, data_preprocessor: dict | None = None, init_cfg: dict | None = None,
                 saved_predictions: str | None = None, **model_keys) -> None:
        if data_preprocessor is None:
            data_preprocessor = CASSDataPreProcessor(mean=list(CLIP_MEAN), std=list(CLIP_STD), bgr_to_rgb=True)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.model: CASSModel = build_model(**model_keys)
        self.saved_predictions = saved_predictions
        # frozen: mmengine's distributed wrapper leaves modules without trainable parameters alone
        self.model.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def predict(self, inputs: Tensor, data_samples: list[SegDataSample] | None = None) -> list[SegDataSample]:
        """mmseg ``predict``: ``seg_logits`` (class probabilities) and ``pred_sem_seg``
        at each sample's ``ori_shape``.

        Args:
            inputs: (B, 3, H, W) CLIP-normalised images (padded to a common size).
            data_samples: samples whose metainfo gives ``img_shape`` (the
                resized size inside the padding) and ``ori_shape``.
        """
        if data_samples is None:
            size = tuple(inputs.shape[-2:])
            data_samples = [SegDataSample(metainfo=dict(img_shape=size, ori_shape=size)) for _ in inputs]
        todo = []
        for img, sample in zip(inputs, data_samples):
            saved = None
            if self.saved_predictions is not None and "img_path" in sample:
                path = prediction_path(self.saved_predictions, sample)
                saved = read_prediction(path, sample) if path.is_file() else None
            if saved is not None:  # resumed: the labels of the interrupted run
                sample.set_data({"pred_sem_seg": PixelData(data=torch.from_numpy(saved)[None].to(img.device))})
                continue
            h, w = sample.metainfo.get("img_shape", img.shape[-2:])[:2]
            todo.append((img[:, :h, :w], sample))
        images = [img for img, _ in todo]
        sizes = [tuple(s.metainfo.get("ori_shape", img.shape[-2:])[:2]) for img, s in todo]
        sam_images = self.sam_images([s for _, s in todo]) if self.model.sees_originals else None
        paths = [s.img_path if "img_path" in s else None for _, s in todo]
        for (_, sample), prediction in zip(todo, self.model(images, sizes, sam_images, paths=paths) if todo else []):
            sample.set_data({"seg_logits": PixelData(data=prediction.probs),
                             "pred_sem_seg": PixelData(data=prediction.labels[None])})
        return data_samples

    @staticmethod
    def sam_images(samples: list[SegDataSample]) -> list[np.ndarray] | None:
        """The original RGB images SAM and mask generators see (Trident, CorrCLIP), read from each sample's
        ``img_path``.

        mmseg's test pipeline keeps only the resized image, so the original is
        read again, with the pipeline's own decoder (``mmcv.imread``), as the
        released Trident does; samples without ``img_path`` (direct calls)
        give None: the model then resizes its input back.
        """
        if not all("img_path" in s for s in samples):
            return None
        images = []
        for sample in samples:
            bgr = mmcv.imread(sample.img_path)
            if bgr is None:
                raise FileNotFoundError(f"cannot read the image {sample.img_path} for SAM")
            images.append(np.ascontiguousarray(bgr[..., ::-1]))
        return images

    def encode_decode(self, inputs: Tensor, batch_data_samples: list[SegDataSample] | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, Q, H, W) query logits at input resolution (no padding assumed)."""
        return torch.stack(self.model.query_logits(list(inputs)))

    def _forward(self, inputs: Tensor, data_samples: list[SegDataSample] | None = None) -> Tensor:
        return self.encode_decode(inputs, data_samples)

    def extract_feat(self, inputs: Tensor) -> Tensor:
        raise NotImplementedError("CASS has no single feature map; use predict() or model.crop_logits()")

    def loss(self, inputs: Tensor, data_samples: list[SegDataSample]) -> dict:
        raise NotImplementedError("CASS is training-free: it has no loss")
