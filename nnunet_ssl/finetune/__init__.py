"""Fine-tuning a pretrained encoder in nnU-Net: freezing, warm-up, encoder learning rate, settings.

The trainer classes (:mod:`nnunet_ssl.finetune.trainers`) are thin subclasses of
``nnUNetTrainer``; the logic is in pure functions here:

* :mod:`~nnunet_ssl.finetune.freezing`: which parameters are the encoder, its
  stages from the stem to the deepest, freezing and unfreezing, schedules.
* :mod:`~nnunet_ssl.finetune.warmup`: learning-rate formulas and the per-epoch scheduler.
* :mod:`~nnunet_ssl.finetune.settings`: the ``finetune`` block of the plans.
"""
