"""Segmentation losses for nnU-Net training, and the trainer mixin that puts them in place of Dice + CE.

* :mod:`~nnunet_ssl.losses.focal_tversky`: the focal Tversky loss (Abraham and Khan 2019) and the
  ``focal_tversky`` block of the plans that sets it.
* :mod:`~nnunet_ssl.losses.trainers`: ``nnUNetTrainerFocalTversky`` and a focal Tversky twin of
  every fine-tuning strategy of :mod:`nnunet_ssl.finetune.trainers`.
"""
