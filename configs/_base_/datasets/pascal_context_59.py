# Pascal Context val, 59 classes (background ignored: reduce_zero_label);
# same files as pascal_context.py.
_base_ = './pascal_context.py'
dataset_type = 'PascalContextDataset59'
test_dataloader = dict(dataset=dict(type=dataset_type))
