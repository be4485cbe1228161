"""Masked image modelling for nnU-Net's U-Net (SparK / MAE for CNNs): masking, loss, settings, trainer."""
