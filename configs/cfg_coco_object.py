# CASS on COCO-Object (background + 80 things); paper: 37.8 mIoU (CLIP ViT-B/16 + DINO ViT-B/8, no PAMR).
#   python eval.py --config configs/cfg_coco_object.py --pamr off
_base_ = ['./_base_/default_runtime.py', './_base_/models/cass_vitb16_dinob8.py', './_base_/datasets/coco_object.py']

model = dict(
    name_path='{{fileDirname}}/cls_coco_object.txt',
    global_semantics_weight=0.25,  # gamma
    mean_vector_weight=0.01,  # alpha
    h_threshold=0.10,
    prob_thd=0.1,
)
