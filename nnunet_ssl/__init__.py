"""nnunet-ssl: self-supervised pretraining of nnU-Net's encoder (DeSD) and the tools around it."""

__version__ = "0.1.0"
