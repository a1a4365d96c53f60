# Cityscapes val, 19 classes: 500 images of 2048x1024, resized to a short side
# of 560. mmseg layout: data/cityscapes/{leftImg8bit/val,
# gtFine/val/*_gtFine_labelTrainIds.png} (mmseg's cityscapes.py converter).
dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 560), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline=test_pipeline))
