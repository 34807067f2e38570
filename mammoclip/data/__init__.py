"""Pre-training data: datasets, text generation, augmentation and batching for CLIP-style training.

* :mod:`mammoclip.data.clip_data` -- the multi-view datasets of the image+report table
  (:class:`~mammoclip.data.clip_data.ImageTextDataset`) and of the VinDr image-label table
  (:class:`~mammoclip.data.clip_data.VindrLabelDataset`, label -> sentence generation from
  ``vindr_prompts.yaml``), the collate function and
  :func:`~mammoclip.data.clip_data.build_pretraining_datasets` (train / validation split, never the VinDr
  test split);
* :mod:`mammoclip.data.transforms` -- image augmentation (flips, random affine, elastic) on 8-bit grey
  images, with a ``legacy`` mode reproducing upstream's fixed-magnitude affine;
* ``vindr_prompts.yaml`` -- this project's own sentences for the VinDr finding categories (package data).

What upstream does here and where we differ: docs/upstream.md#pretraining.
"""
