# Runtime for training-free evaluation: mmseg scope, a test loop and mIoU.
# (PerClassIoUMetric comes from cass.mmseg, imported by models/cass_vitb16_dinob8.py.)
default_scope = 'mmseg'

env_cfg = dict(
    cudnn_benchmark=False,  # image sizes vary from one test image to the next
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
)

test_cfg = dict(type='TestLoop')
# mmseg's IoUMetric (reports aAcc, mIoU, mAcc and logs the per-class table),
# keeping the per-class values for eval.py's JSON report.
test_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])

# Multi-GPU (torchrun ... --launcher pytorch): CASS has no trainable parameter
# and plain DistributedDataParallel refuses such a model; this wrapper only
# moves frozen submodules to each process's GPU.
model_wrapper_cfg = dict(type='MMSeparateDistributedDataParallel')
