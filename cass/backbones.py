"""The supported backbones, one entry each: architecture, release file, URL and format.

Like timm's pretrained ``default_cfgs``: every fact about a backbone sits in
its entry of :data:`CLIP_SPECS`, :data:`VFM_SPECS` or :data:`SAM_SPECS`, and the code that
builds, downloads, loads or checks a model reads it from there (the loaders
are in :mod:`cass.weights`, the VFM keys in :mod:`cass.vfm_keys`, the table
for readers in ``docs/backbones.md``). Standard library only, so that
command lines can offer the names without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass


def url_file(url: str) -> str:
    """The file name a release URL ends in (``'.../ViT-L-14.pt'`` -> ``'ViT-L-14.pt'``)."""
    return url.rsplit("/", 1)[-1]


# The CLIP release formats (:attr:`CLIPSpec.release_format`) and what they hold.
CLIP_FORMAT_NAMES = {
    "openai": "OpenAI CLIP (TorchScript archive or state dict)",
    "open_clip": "OpenCLIP state dict",
    "metaclip": "MetaCLIP checkpoint ({'state_dict': ...} in OpenAI's layout)",
}


@dataclass(frozen=True)
class CLIPSpec:
    """A CLIP release: OpenAI's, an OpenCLIP one or a MetaCLIP one.

    Attributes:
        open_clip_name: the open_clip architecture (QuickGELU for OpenAI's and
            MetaCLIP's models: ``*-quickgelu`` names where open_clip has both).
        url: the release (downloaded once when no path is given): OpenAI's
            TorchScript archive, OpenCLIP's state dict on the Hugging Face hub,
            or Meta's checkpoint.
        release_format: ``'openai'`` (OpenAI's archive or state dict, the
            architecture read from its shapes), ``'open_clip'`` (a state dict
            of open_clip's ``CLIP`` of ``open_clip_name``, GELU) or
            ``'metaclip'`` (Meta's training checkpoint: the weights under
            ``'state_dict'``, in OpenAI's key layout, QuickGELU; loaded as
            OpenAI's, the architecture read from its shapes); a key of
            :data:`CLIP_FORMAT_NAMES`.
    """

    open_clip_name: str
    url: str
    release_format: str = "openai"

    def __post_init__(self) -> None:
        if self.release_format not in CLIP_FORMAT_NAMES:
            raise ValueError(f"release_format must be one of {sorted(CLIP_FORMAT_NAMES)}, got {self.release_format!r}")

    @property
    def release_file(self) -> str:
        """File name of the release (``'.../ViT-L-14.pt'`` -> ``'ViT-L-14.pt'``)."""
        return url_file(self.url)


METACLIP_URL = "https://dl.fbaipublicfiles.com/MMPT/metaclip/"

CLIP_SPECS: dict[str, CLIPSpec] = {
    "ViT-B/16": CLIPSpec("ViT-B-16", "https://openaipublic.azureedge.net/clip/models/"
                         "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"),
    "ViT-L/14": CLIPSpec("ViT-L-14", "https://openaipublic.azureedge.net/clip/models/"
                         "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
    "ViT-L/14@336px": CLIPSpec("ViT-L-14-336", "https://openaipublic.azureedge.net/clip/models/"
                               "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt"),
    # Trident's best row (OpenCLIP ViT-H/14 trained on LAION-2B), open_clip's "laion2b_s32b_b79k" tag
    "ViT-H-14/laion2b_s32b_b79k": CLIPSpec(
        "ViT-H-14", "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K/resolve/main/"
        "open_clip_pytorch_model.bin", release_format="open_clip"),
    # CorrCLIP's rows: MetaCLIP trained on 2.5B pairs of full CommonCrawl, open_clip's "metaclip_fullcc" tag
    # (CorrCLIP's create_model(model_type, pretrained=clip_type)); Meta's files, as open_clip's table lists them
    "ViT-B-16-quickgelu/metaclip_fullcc": CLIPSpec(
        "ViT-B-16-quickgelu", METACLIP_URL + "b16_fullcc2.5b.pt", release_format="metaclip"),
    "ViT-L-14-quickgelu/metaclip_fullcc": CLIPSpec(
        "ViT-L-14-quickgelu", METACLIP_URL + "l14_fullcc2.5b.pt", release_format="metaclip"),
}

# Display names of the VFM release formats (for messages).
FORMAT_NAMES = {"dino": "DINO (facebookresearch/dino)", "dinov2": "DINOv2", "dinov3": "DINOv3"}


@dataclass(frozen=True)
class VFMSpec:
    """What CASS needs to know about a vision foundation model (full size).

    Attributes:
        timm_name: the timm architecture.
        patch_size: side of a patch in pixels.
        fixed_size: side of the square the VFM input is resized to (the
            DINOv2 option of the released code), None to keep the crop's size.
        num_prefix_tokens: CLS plus register tokens ahead of the patches
            (timm's ``model.num_prefix_tokens``; checked against it in the tests).
        num_heads: heads of the last block (CASS pairs them one to one with CLIP's).
        release_format: layout of the public checkpoint: ``'dino'``
            (facebookresearch/dino), ``'dinov2'`` or ``'dinov3'`` (a key of
            :data:`FORMAT_NAMES`).
        release_file: file name of the release (in the weights cache).
        url: the public release (downloaded once when no path is given);
            None for a gated one.
        download_page: where a gated release is requested (the file is never
            downloaded here); None for a public one.

    All supported models take ImageNet-normalised input (DINOv3's LVD-1689M
    models too; only its satellite models use other statistics).
    """

    timm_name: str
    patch_size: int
    fixed_size: int | None
    num_prefix_tokens: int
    num_heads: int
    release_format: str
    release_file: str
    url: str | None = None
    download_page: str | None = None

    def __post_init__(self) -> None:
        if self.release_format not in FORMAT_NAMES:
            raise ValueError(f"release_format must be one of {sorted(FORMAT_NAMES)}, got {self.release_format!r}")
        if (self.url is None) == (self.download_page is None):
            raise ValueError(f"{self.release_file}: give either a public url or a gated download_page")
        if self.url is not None and url_file(self.url) != self.release_file:
            raise ValueError(f"url {self.url} does not end in the release file {self.release_file}")


# Meta e-mails a download link for DINOv3 after its licence form.
DINOV3_DOWNLOAD_PAGE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"

VFM_SPECS: dict[str, VFMSpec] = {
    "dino_vitb8": VFMSpec(
        "vit_base_patch8_224", 8, None, 1, 12, "dino", "dino_vitbase8_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    "dino_vitb16": VFMSpec(
        "vit_base_patch16_224", 16, None, 1, 12, "dino", "dino_vitbase16_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    "dinov2_vitb14": VFMSpec(
        "vit_base_patch14_dinov2", 14, 518, 1, 12, "dinov2", "dinov2_vitb14_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
    "dinov2_vitb14_reg4": VFMSpec(
        "vit_base_patch14_reg4_dinov2", 14, 518, 5, 12, "dinov2", "dinov2_vitb14_reg4_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"),
    "dinov2_vitl14": VFMSpec(
        "vit_large_patch14_dinov2", 14, 518, 1, 16, "dinov2", "dinov2_vitl14_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"),
    "dinov2_vitl14_reg4": VFMSpec(
        "vit_large_patch14_reg4_dinov2", 14, 518, 5, 16, "dinov2", "dinov2_vitl14_reg4_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"),
    # the qkvb variants hold the q and v biases of Meta's release (mask_k_bias: k's is zero)
    "dinov3_vitb16": VFMSpec(
        "vit_base_patch16_dinov3_qkvb", 16, None, 5, 12, "dinov3", "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
        download_page=DINOV3_DOWNLOAD_PAGE),
    "dinov3_vitl16": VFMSpec(
        "vit_large_patch16_dinov3_qkvb", 16, None, 5, 16, "dinov3", "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
        download_page=DINOV3_DOWNLOAD_PAGE),
}


def vfms_with_heads(count: int) -> list[str]:
    """The VFMs whose last block has ``count`` heads (those CASS can pair with a CLIP of ``count`` heads)."""
    return [name for name, spec in VFM_SPECS.items() if spec.num_heads == count]


@dataclass(frozen=True)
class SAMSpec:
    """A Segment Anything release (Trident's SAM; the key is segment-anything's ``sam_model_registry`` name).

    Attributes:
        release_file: file name of the release (in the weights cache); a plain
            state dict of segment-anything's ``Sam`` (image encoder, prompt
            encoder and mask decoder).
        url: the public release (downloaded once when no path is given).
    """

    release_file: str
    url: str

    def __post_init__(self) -> None:
        if url_file(self.url) != self.release_file:
            raise ValueError(f"url {self.url} does not end in the release file {self.release_file}")


SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

SAM_SPECS: dict[str, SAMSpec] = {
    kind: SAMSpec(file, SAM_URL + file)
    for kind, file in (("vit_b", "sam_vit_b_01ec64.pth"), ("vit_l", "sam_vit_l_0b3195.pth"),
                       ("vit_h", "sam_vit_h_4b8939.pth"))
}
