# CASS on ADE20K (150 classes); paper: 20.4 mIoU (CLIP ViT-B/16 + DINO ViT-B/8, no PAMR).
#   python eval.py --config configs/cfg_ade20k.py --pamr off
_base_ = ['./_base_/default_runtime.py', './_base_/models/cass_vitb16_dinob8.py', './_base_/datasets/ade20k.py']

model = dict(
    name_path='{{fileDirname}}/cls_ade20k.txt',
    global_semantics_weight=0.3,  # gamma
    mean_vector_weight=0.05,  # alpha
    h_threshold=0.06,
    prob_thd=0.0,
)
