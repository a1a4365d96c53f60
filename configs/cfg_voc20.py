# CASS on Pascal VOC 2012 without background (20 classes); paper: 87.8 mIoU (CLIP ViT-B/16 + DINO ViT-B/8, no PAMR).
#   python eval.py --config configs/cfg_voc20.py --pamr off
_base_ = ['./_base_/default_runtime.py', './_base_/models/cass_vitb16_dinob8.py', './_base_/datasets/pascal_voc12_20.py']

model = dict(
    name_path='{{fileDirname}}/cls_voc20.txt',
    global_semantics_weight=0.4,  # gamma
    mean_vector_weight=0.02,  # alpha
    h_threshold=0.10,
    prob_thd=0.0,
    eigenscaling=False,
)
