"""MoCo v2 pretraining; the trainer is in :mod:`.trainer`."""
