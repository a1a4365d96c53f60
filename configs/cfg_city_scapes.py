# CASS on Cityscapes (19 classes, short side 560); paper: 39.4 mIoU (CLIP ViT-B/16 + DINO ViT-B/8, no PAMR).
#   python eval.py --config configs/cfg_city_scapes.py --pamr off
_base_ = ['./_base_/default_runtime.py', './_base_/models/cass_vitb16_dinob8.py', './_base_/datasets/cityscapes.py']

model = dict(
    name_path='{{fileDirname}}/cls_city_scapes.txt',
    global_semantics_weight=0.1,  # gamma
    mean_vector_weight=0.03,  # alpha
    h_threshold=0.14,
    prob_thd=0.0,
    eigenscaling=False,
    prior_from_crop=True,  # presence prior from each crop, not the whole image
)
