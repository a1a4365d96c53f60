# Pascal VOC 2012 val without background (20 classes, background ignored);
# same files as pascal_voc12.py.
_base_ = './pascal_voc12.py'
dataset_type = 'PascalVOC20Dataset'
test_dataloader = dict(dataset=dict(type=dataset_type))
