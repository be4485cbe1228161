"""CM-UNet (contrastive + masked) pretraining; the trainer is in :mod:`.trainer`."""
