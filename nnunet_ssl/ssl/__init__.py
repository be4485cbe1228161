"""Pretraining methods besides DeSD (:mod:`nnunet_ssl.desd`): one trainer base (:mod:`nnunet_ssl.ssl.base`),
shared settings parsing and restoration helpers, and one sub-package per method (``mae``, ``genesis``,
``inpainting``, ``rotation``)."""
