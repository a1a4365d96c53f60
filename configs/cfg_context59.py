# CASS on Pascal Context without background (59 classes); paper: 40.2 mIoU (CLIP ViT-B/16 + DINO ViT-B/8, no PAMR).
#   python eval.py --config configs/cfg_context59.py --pamr off
_base_ = ['./_base_/default_runtime.py', './_base_/models/cass_vitb16_dinob8.py', './_base_/datasets/pascal_context_59.py']

model = dict(
    name_path='{{fileDirname}}/cls_context59.txt',
    global_semantics_weight=0.25,  # gamma
    mean_vector_weight=0.04,  # alpha
    h_threshold=0.09,
    prob_thd=0.0,
)
