"""The DINO input on the crops' device equals the released code's NumPy + PIL path, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from skimage import data

from cass import dino_input
from cass.backbones import VFM_SPECS
from cass.constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, REFERENCE_INVERSE_STD


def released_dino_images(crops: torch.Tensor, patch: int, fixed_size: int | None) -> torch.Tensor:
    """The released code's steps: float32 tensor -> NumPy uint8 -> PIL resize -> tensor."""
    side = min(crops.shape[-2:])
    out = []
    for crop in crops.float():
        pixels = TF.normalize(crop, [-m / s for m, s in zip(IMAGENET_MEAN, REFERENCE_INVERSE_STD)],
                              [1 / s for s in REFERENCE_INVERSE_STD])
        image = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        if fixed_size is None:
            image = image.resize((side, side))
        else:
            image = image.resize((fixed_size, fixed_size), Image.BILINEAR)
        out.append(TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD))
    images = torch.stack(out)
    size = images.shape[-1] - images.shape[-1] % patch
    return images[..., :size, :size]


def clip_crop(photo: np.ndarray, size: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """A CLIP-normalised crop of a photo; ``gain`` > 1 pushes pixels outside 0..255."""
    img = torch.from_numpy(photo).permute(2, 0, 1).float()[None]
    img = F.interpolate(img, size=size, mode="bilinear", align_corners=False).clamp(0, 255)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (img - mean) / std * gain


SIZES = [(224, 224), (336, 448), (448, 336), (224, 301), (301, 225), (96, 517), (517, 60)]


@pytest.mark.parametrize("vfm", ["dino_vitb8", "dinov2_vitb14_reg4"])
@pytest.mark.parametrize("size", SIZES)
def test_reference_input_equals_numpy_and_pil(vfm, size):
    spec = VFM_SPECS[vfm]
    crops = torch.cat([clip_crop(data.astronaut(), size), clip_crop(data.coffee(), size, gain=1.4)])
    expected = released_dino_images(crops, spec.patch_size, spec.fixed_size)
    assert torch.equal(dino_input.reference_dino_images(crops, spec), expected)


def test_uint8_cast_wraps_like_numpy():
    values = torch.tensor([-300.7, -3.7, -0.5, 0.0, 127.9, 255.9, 256.0, 300.2, 511.0, 1000.0])
    ours = ((values * 1).to(torch.int32) & 255).numpy()
    assert ours.tolist() == values.numpy().astype(np.uint8).tolist()


@pytest.mark.parametrize("kind,pil_filter", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
def test_pil_resize_equals_pil(kind, pil_filter):
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((50, 70), (50, 50)), ((31, 97), (64, 13)), ((224, 224), (518, 518)), ((5, 9), (9, 5))]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(pixels).resize((ow, oh), pil_filter))
        ours = dino_input.pil_resize(torch.from_numpy(pixels).permute(2, 0, 1), (oh, ow), kind)
        assert torch.equal(ours.permute(1, 2, 0).to(torch.uint8), torch.from_numpy(expected))


def test_pil_coefficients_sum_to_one_in_fixed_point():
    weights = dino_input.pil_coefficients(448, 336, "bicubic")
    assert weights.shape == (336, 448)
    assert ((weights.sum(1) - 2 ** 22).abs() <= 8).all()  # rounding of each tap by at most 1/2 unit
    assert weights.min() < 0  # bicubic's negative lobes
