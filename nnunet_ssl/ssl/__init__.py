"""Self-supervised methods besides DeSD (:mod:`nnunet_ssl.desd`), one sub-package each."""
