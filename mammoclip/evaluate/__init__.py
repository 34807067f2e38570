"""Downstream evaluation: metrics with bootstrap intervals and the two evaluation protocols.

* :mod:`mammoclip.evaluate.metrics` — :func:`~mammoclip.evaluate.metrics.binary_metrics` (AUROC),
  :func:`~mammoclip.evaluate.metrics.multiclass_metrics` (accuracy, macro F1, majority-class baseline), both
  with seeded percentile bootstrap intervals (optionally resampling whole patients),
  :func:`~mammoclip.evaluate.metrics.aggregate_by` (e.g. RSNA breast level) and
  :func:`~mammoclip.evaluate.metrics.summarise_runs` (mean / spread over folds or seeds).
* :mod:`mammoclip.evaluate.protocols` — ``paper`` (upstream's splits, model selection on the reported set
  included, reproduced on purpose) and ``clean`` (selection on held-out training patients, all RSNA folds,
  patient-level data fractions): :func:`~mammoclip.evaluate.protocols.split_vindr`,
  :func:`~mammoclip.evaluate.protocols.split_rsna`, :func:`~mammoclip.evaluate.protocols.sample_fraction`,
  :func:`~mammoclip.evaluate.protocols.rsna_folds_to_run`.
* :mod:`mammoclip.evaluate.detection` — box matching (:func:`~mammoclip.evaluate.detection.match_detections`),
  VOC all-point AP (:func:`~mammoclip.evaluate.detection.voc_ap`), FROC
  (:func:`~mammoclip.evaluate.detection.froc_curve`, :func:`~mammoclip.evaluate.detection.froc_points`,
  :func:`~mammoclip.evaluate.detection.cpm`) and all of them with bootstrap intervals over patients
  (:func:`~mammoclip.evaluate.detection.detection_metrics`).
* :mod:`mammoclip.evaluate.roc` — ROC curves of zero-shot and classifier scores on the rows the tables
  evaluate (:func:`~mammoclip.evaluate.roc.roc_curves`), for the report's figures.

The modules are pure (arrays / DataFrames in, dicts / DataFrames out; no file or config I/O) and need only
numpy, pandas and scikit-learn.
"""
