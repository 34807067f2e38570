"""Pre-training data: datasets, text generation, augmentation and batching for CLIP-style training.

* :mod:`mammoclip.data.pretrain` -- the multi-view datasets of the image+report table
  (:class:`~mammoclip.data.pretrain.ImageTextDataset`) and of the VinDr image-label table
  (:class:`~mammoclip.data.pretrain.VindrLabelDataset`, label -> sentence generation from
  ``vindr_prompts.yaml``), the collate function and
  :func:`~mammoclip.data.pretrain.build_pretraining_datasets` (train / validation split, never the VinDr
  test split);
* :mod:`mammoclip.data.transforms` -- image augmentation (flips, random affine, elastic) on 8-bit grey
  images, with a ``legacy`` mode reproducing upstream's fixed-magnitude affine;
* ``vindr_prompts.yaml`` -- this project's own sentences for the VinDr finding categories (package data).

Upstream reference: upstream-mammoclip.md sections 5.3, 6.5, 6.6 and 13.1 items 7, 8, 14, 21.
"""
