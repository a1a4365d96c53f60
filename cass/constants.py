"""Normalisation constants of the models (their releases are in :mod:`cass.backbones`)."""

# CLIP's normalisation in 0..255 pixel space (RGB), as the released configs give it.
CLIP_MEAN = (122.771, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)
# ImageNet statistics in 0..1 space (DINO's normalisation; DINOv2's and DINOv3's LVD-1689M models use them too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The released code rebuilds the DINO image with 0.255 (sic) as the blue std.
REFERENCE_INVERSE_STD = (0.229, 0.224, 0.255)

