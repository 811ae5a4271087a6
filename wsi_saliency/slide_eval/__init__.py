"""Slide-level evaluation the Camelyon16 way: slide ROC AUC (bootstrap CI) and lesion FROC.

- :mod:`.reference`: the reference CSV (``slide,Tumor|Normal``) and lesion annotations
  (ASAP XML or mask TIFF) as tumour masks on the 7.776 um evaluation grid;
- :mod:`.detections`: lesion detections from a probability heatmap; submission CSVs;
- :mod:`.froc`: evaluation mask, ITC regions, hit matching and the FROC curve and score;
- :mod:`.slide_auc`: slide AUC with a stratified bootstrap interval;
- :mod:`.evaluate`: :func:`evaluate_slides` over a scan output folder, and the writers.

Nothing here imports TensorFlow (except :func:`evaluate_slides` recording software versions).
"""

from wsi_saliency.slide_eval.evaluate import (
    EvalConfig,
    SlideEvalResult,
    evaluate_slides,
    write_outputs,
)

__all__ = ["EvalConfig", "SlideEvalResult", "evaluate_slides", "write_outputs"]
