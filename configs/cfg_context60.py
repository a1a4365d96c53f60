# CASS on Pascal Context (60 classes); paper: 36.7 mIoU (CLIP ViT-B/16 + DINO ViT-B/8, no PAMR).
#   python eval.py --config configs/cfg_context60.py --pamr off
_base_ = ['./_base_/default_runtime.py', './_base_/models/cass_vitb16_dinob8.py', './_base_/datasets/pascal_context.py']

model = dict(
    name_path='{{fileDirname}}/cls_context60.txt',
    global_semantics_weight=0.25,  # gamma
    mean_vector_weight=0.04,  # alpha
    h_threshold=0.09,
    prob_thd=0.1,
)
