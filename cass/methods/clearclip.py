"""ClearCLIP (Lan et al., ECCV 2024): ``softmax(s Q Q^T)``, no residual, no FFN."""
from __future__ import annotations

from torch import Tensor

from ..benchmarks import benchmark_row, benchmark_table, class_files, with_settings
from .common import self_self_attention
from .registry import Method, register_method
from .token_mixing import token_mixing_block


def attention(ctx, q: Tensor, k: Tensor, grid: tuple[int, int]) -> Tensor:
    """ClearCLIP: ``softmax(s Q Q^T)``."""
    return self_self_attention(q)


ENTRY = register_method(Method(
    name="clearclip", title="ClearCLIP (Lan et al., ECCV 2024)", last_block=token_mixing_block(attention),
    residual=False,
    # 448 windows, stride 224, short side 448, logit scale 50; its own VOC and COCO-Object class files
    protocol=with_settings(benchmark_table(dict(slide_crop=448, slide_stride=224, logit_scale=50, prob_thd=0.0,
                                                area_thd=0.0, short_side=448),
                                           voc21=dict(prob_thd=0.5), context60=dict(prob_thd=0.15),
                                           coco_object=dict(prob_thd=0.4), city_scapes=dict(slide_crop=224)),
                           class_files("clearclip")),
    published=benchmark_row(51.8, 32.6, 33.0, 80.9, 35.9, 23.9, 30.0, 16.7),
    source="ClearCLIP paper (Lan et al., ECCV 2024), Table 1, ViT-B/16"))
