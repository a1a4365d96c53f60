# CASS on COCO-Stuff164k (171 classes); paper: 26.7 mIoU (CLIP ViT-B/16 + DINO ViT-B/8, no PAMR).
#   python eval.py --config configs/cfg_coco_stuff164k.py --pamr off
_base_ = ['./_base_/default_runtime.py', './_base_/models/cass_vitb16_dinob8.py', './_base_/datasets/coco_stuff164k.py']

model = dict(
    name_path='{{fileDirname}}/cls_coco_stuff.txt',
    global_semantics_weight=0.2,  # gamma
    mean_vector_weight=0.02,  # alpha
    h_threshold=0.02,
    prob_thd=0.0,
)
