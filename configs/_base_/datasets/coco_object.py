# COCO-Object val: background + 80 things, 5000 images. Same images as
# coco_stuff164k.py; labels annotations/val2017/*_instanceTrainIds.png written
# by `python datasets/cvt_coco_object.py data/coco_stuff164k`.
_base_ = './coco_stuff164k.py'
dataset_type = 'COCOObjectDataset'
test_dataloader = dict(dataset=dict(type=dataset_type))
