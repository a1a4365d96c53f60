# CASS on Pascal VOC 2012 (21 classes); paper: 65.8 mIoU (CLIP ViT-B/16 + DINO ViT-B/8, no PAMR).
#   python eval.py --config configs/cfg_voc21.py --pamr off
_base_ = ['./_base_/default_runtime.py', './_base_/models/cass_vitb16_dinob8.py', './_base_/datasets/pascal_voc12.py']

model = dict(
    name_path='{{fileDirname}}/cls_voc21.txt',
    global_semantics_weight=0.1,  # gamma
    mean_vector_weight=0.03,  # alpha
    h_threshold=0.10,
    prob_thd=0.1,
    slide_crop=0,  # whole resized image in one pass
)
