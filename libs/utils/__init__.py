"""NMS, post-processing and evaluation utilities."""
from .metrics import ANETdetection, metrics_to_dict, remove_duplicate_annotations
from .nms import batched_nms, cpp_nms_available
from .postprocessing import load_external_scores, postprocess_results, segments_to_seconds
