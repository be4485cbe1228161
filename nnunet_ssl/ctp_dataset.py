"""CT perfusion parametric maps as channels of an nnU-Net raw dataset, with core and penumbra labels.

Per case the grey-scale parametric maps CBF, CBV, TTP and Tmax (and optionally
a MIP) on one voxel grid, and a label map with background 0, penumbra 1 and
core 2. Each map becomes one channel, always in the order of :data:`MAPS`
(recorded in ``dataset.json``'s ``channel_names``). nnU-Net chooses a
channel's normalisation by its name and z-scores every name it does not know
(``CT``, ``noNorm``, ``rescale_to_0_1``, ``rgb_to_0_1``), so the map names both
record the order and give each map nnU-Net's per-image z-score. With ``regions=True`` the dataset declares nnU-Net's region-based
labels: ``hypoperfused`` = penumbra or core (labels 1 and 2) and ``core`` =
label 2, trained with a sigmoid per region; ``regions_class_order`` turns the
predicted regions back into the label map 0/1/2.

A map exported as a colour picture (an RGB volume drawn with the package's colour bar) is read
back to values with that colour bar, given as a table (:mod:`nnunet_ssl.colour_maps`).

Example:
    >>> write_ctp_dataset("ctp_inputs", "nnUNet_raw/Dataset640_CTP", regions=True)  # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import SimpleITK as sitk

from nnunet_ssl.errors import UserError

MAPS = ("CBF", "CBV", "TTP", "Tmax", "MIP")  # channel order; MIP is optional
OPTIONAL_MAPS = ("MIP",)
LABELS = {"background": 0, "penumbra": 1, "core": 2}
REGION_LABELS = {"background": 0, "hypoperfused": [1, 2], "core": [2]}
REGIONS_CLASS_ORDER = [1, 2]  # paint hypoperfused as 1, then core as 2 on top


@dataclass
class CTPSummary:
    output: Path
    cases: list[str]
    channels: dict[int, str]  # channel -> map
    # colour-coded maps: map -> case -> fraction of voxels whose colour is not on the colour bar
    unmatched: dict[str, dict[str, float]]


def write_ctp_dataset(source: Path | str, output_folder: Path | str, regions: bool = False,
                      npy_spacing: Optional[Sequence[float]] = None, overwrite: bool = False,
                      progress: bool = True, dataset_name: Optional[str] = None,
                      colour_tables: Optional[Mapping[str, Path | str]] = None,
                      max_colour_distance: float = 30.0) -> CTPSummary:
    """Write a multi-channel nnU-Net raw dataset from per-case perfusion maps and core/penumbra labels.

    Args:
        source: Folder with sub-folders ``CBF/``, ``CBV/``, ``TTP/``, ``Tmax/``, optionally ``MIP/``,
            and ``labels/`` (``CASE.nii.gz``, ``.nrrd``, ``.npy`` ...), or a CSV with columns
            ``case,CBF,CBV,TTP,Tmax[,MIP],label``. Where the MIP is given it is needed for every case.
        output_folder: The new dataset, e.g. ``$nnUNet_raw/Dataset640_CTP``.
        regions: Declare region-based labels (hypoperfused = (1, 2), core = (2,)).
        npy_spacing: ``(sx, sy, sz)`` mm for ``.npy`` inputs (arrays in ``(z, y, x)`` order).
        overwrite: Replace an existing output.
        progress: Show a progress bar.
        dataset_name: ``name`` in ``dataset.json`` (default: the output folder's name).
        colour_tables: Map name -> colour table CSV (``value,r,g,b``) for maps given as RGB volumes;
            each voxel gets the value of the nearest table colour, voxels farther than
            ``max_colour_distance`` (RGB units) from every colour the table's lowest value.

    Returns:
        A :class:`CTPSummary`.

    Raises:
        UserError: Naming the case (and the map) for a missing file, a map whose grid (size, spacing,
            origin, direction) differs from the case's first map, a label off that grid, or label
            values other than 0, 1, 2.

    Example:
        >>> write_ctp_dataset("cases.csv", "nnUNet_raw/Dataset640_CTP")  # doctest: +SKIP
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    from nnunet_ssl.colour_maps import ColourTable, colour_volume_to_values, read_colour_volume
    from nnunet_ssl.ct.io import write_image
    from nnunet_ssl.raw_dataset import (check_output, grid_difference, label_image, load_volume, partial_folder,
                                        read_case_table)

    source = Path(source).resolve()
    output = Path(output_folder).resolve()
    cases = read_case_table(source, MAPS + ("label",), optional=OPTIONAL_MAPS)
    maps = [m for m in MAPS if next(iter(cases.values()))[m] is not None]
    channels = dict(enumerate(maps))
    unknown = sorted(set(colour_tables or {}) - set(maps))
    if unknown:
        raise UserError(f"colour table(s) given for {', '.join(unknown)}, which is not a map of this dataset "
                        f"(maps: {', '.join(maps)})")
    if not max_colour_distance >= 0:
        raise UserError(f"the colour distance must be >= 0, got {max_colour_distance}")
    tables = {name: ColourTable.read(path) for name, path in (colour_tables or {}).items()}
    unmatched: dict[str, dict[str, float]] = {name: {} for name in tables}
    check_output(output, [source] + [p.resolve() for f in cases.values() for p in f.values() if p], overwrite)
    with partial_folder(output) as work:
        for case, files in tqdm(cases.items(), desc="ctp-dataset", unit="case", disable=not progress):
            first = None
            for channel, name in channels.items():
                if name in tables:
                    image, unmatched[name][case] = colour_volume_to_values(
                        read_colour_volume(files[name], case, name, npy_spacing), tables[name], max_colour_distance)
                else:
                    try:
                        image = load_volume(files[name], case, name, npy_spacing)
                    except UserError as e:
                        if "components" not in str(e):
                            raise
                        raise UserError(f"{e}; for a colour-coded map give its colour bar with "
                                        f"--colour-table {name}=TABLE.csv") from None
                if first is None:
                    first = image
                else:
                    difference = grid_difference(first, image)
                    if difference:
                        raise UserError(f"case '{case}': map {name} ({files[name].name}) is not on the grid of "
                                        f"map {maps[0]}: {difference}; put every map of a case on one grid")
                write_image(image, work / "imagesTr" / f"{case}_{channel:04d}.nii.gz", sitk.sitkFloat32)
            label = load_volume(files["label"], case, "label", npy_spacing)
            difference = grid_difference(first, label)
            if difference:
                raise UserError(f"case '{case}': the label {files['label'].name} is not on the grid of map "
                                f"{maps[0]}: {difference}")
            write_image(label_image(label, (0, 1, 2), case, files["label"]),
                        work / "labelsTr" / f"{case}.nii.gz", sitk.sitkUInt8)
        generate_dataset_json(
            str(work), channel_names=dict(channels),  # nnU-Net's function edits the dicts it gets
            labels=json.loads(json.dumps(REGION_LABELS if regions else LABELS)), num_training_cases=len(cases), file_ending=".nii.gz",
            regions_class_order=REGIONS_CLASS_ORDER if regions else None,
            dataset_name=dataset_name or output.name,
            description="CT perfusion parametric maps, one channel each (z-scored); labels 0 background, "
                        "1 penumbra, 2 core",
            **({"colour_tables": {name: t.source for name, t in tables.items()}} if tables else {}))
    return CTPSummary(output, list(cases), channels, unmatched)
