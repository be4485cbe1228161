"""Options shared by the commands that write a new nnU-Net raw dataset (``clot-dataset``, ``ctp-dataset``).

Kept apart from :mod:`nnunet_ssl.raw_dataset` so that ``--help`` imports no image library.
"""
from __future__ import annotations

from typing import Optional

from nnunet_ssl.errors import UserError


def add_raw_dataset_arguments(parser) -> None:
    """The options every raw-dataset writer command shares: ``--npy-spacing``, ``--overwrite``, ``--no-progress``."""
    parser.add_argument("--npy-spacing", nargs=3, type=float, default=None, metavar=("SX", "SY", "SZ"),
                        help="voxel spacing (mm) of .npy inputs, whose arrays are in (z, y, x) order")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def npy_spacing(args) -> Optional[list[float]]:
    """``--npy-spacing`` of a writer command, refused unless every value is positive."""
    if args.npy_spacing is not None and min(args.npy_spacing) <= 0:
        raise UserError(f"--npy-spacing must be positive, got {args.npy_spacing}")
    return args.npy_spacing
