# CASS with CLIP ViT-B/16 and DINO ViT-B/8, the published setting.
# Each benchmark config adds its class-name file and its four weights
# (cass/config.py documents every setting, cass/build.py the model keys).
# 'cass.mmseg' registers the segmentor, the datasets, the metric and the result
# writer, so a config alone builds everything.
custom_imports = dict(imports=['cass.mmseg'], allow_failed_imports=False)
model = dict(
    type='CASSSegmentor',
    clip_path='ViT-B/16',  # or a local OpenAI .pt archive / state dict
    vfm='dino_vitb8',
    vfm_path=None,  # None downloads the public VFM checkpoint (dino_path: its former name)
    attn_strategy='spectral',
    slide_crop=224,
    slide_stride=112,
    logit_scale=40,
    prob_thd=0.0,
    eigenscaling=True,
    prior_from_crop=False,
    pamr_steps=0,  # eval.py --pamr on sets 10
    precision='auto',
)
