"""SimCLR pretraining; the trainer is in :mod:`.trainer`."""
