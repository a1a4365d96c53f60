"""Constants of the models and their public releases, in one place."""

# CLIP's normalisation in 0..255 pixel space (RGB), as the released configs give it.
CLIP_MEAN = (122.771, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)
# ImageNet statistics in 0..1 space (DINO's normalisation; DINOv2's and DINOv3's LVD-1689M models use them too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The released code rebuilds the DINO image with 0.255 (sic) as the blue std.
REFERENCE_INVERSE_STD = (0.229, 0.224, 0.255)

# OpenAI's CLIP releases (TorchScript archives) and the open_clip architecture of each.
OPENAI_CLIP_URLS = {
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/"
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/"
                "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/"
                      "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
OPENAI_CLIP_ARCHS = {"ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336"}

# Public VFM release checkpoints (downloaded once when no path is given).
VFM_URLS = {
    "dino_vitb8": "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    "dino_vitb16": "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "dinov2_vitb14": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
    "dinov2_vitb14_reg4": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    "dinov2_vitl14": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
    "dinov2_vitl14_reg4": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth",
}
# Gated VFM releases: Meta e-mails a download link after its licence form; never downloaded here.
DINOV3_DOWNLOAD_PAGE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
VFM_GATED_FILES = {
    "dinov3_vitb16": ("dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", DINOV3_DOWNLOAD_PAGE),
    "dinov3_vitl16": ("dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth", DINOV3_DOWNLOAD_PAGE),
}
