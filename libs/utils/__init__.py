"""NMS, post-processing and evaluation utilities."""
from .metrics import ANETdetection, metrics_to_dict, remove_duplicate_annotations
from .nms import batched_nms, cpp_nms_available
from .postprocessing import load_external_scores, postprocess_results, segments_to_seconds
from .train_utils import (make_optimizer, make_scheduler, save_checkpoint, fix_random_seed, ModelEma, train_one_epoch, valid_one_epoch, AverageMeter)
