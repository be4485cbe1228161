"""Synthetic non-contrast head CT phantoms with hypodense ischaemic lesions.

The phantom is the embedded default data of the demo and the tests: a head
(ellipsoid) with skull, brain parenchyma with a grey/white texture, two lateral
ventricles placed symmetrically about the mid-sagittal plane, and optionally
hypodense lesions in one hemisphere. Intensities are in Hounsfield units.

Arrays use numpy order ``(z, y, x)``; ``x`` is the left-right axis. Written to
disk with SimpleITK the image is axis aligned with the given spacing, so in
ITK's LPS convention ``+x`` points to the patient's left.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
from scipy import ndimage

HU_AIR = -1000.0
HU_SKULL = 1000.0
HU_CSF = 5.0
HU_GREY = 38.0
HU_WHITE = 28.0
LESION_DROP_HU = 8.0

Side = Literal["left", "right", "both", "none"]


@dataclass(frozen=True)
class Phantom:
    """One synthetic case: CT in HU, brain mask and lesion mask (same shape)."""

    image: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray
    spacing: tuple[float, float, float]  # (z, y, x) in mm

    @property
    def lesion_side(self) -> Side:
        """Which hemisphere holds lesion voxels (``x`` greater than centre is left)."""
        if not self.lesion.any():
            return "none"
        mid = self.image.shape[2] / 2.0
        xs = np.nonzero(self.lesion)[2]
        left, right = bool((xs >= mid).any()), bool((xs < mid).any())
        return "both" if left and right else ("left" if left else "right")


def _ellipsoid(grid: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_stroke_phantom(
    shape: Sequence[int] = (48, 64, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    side: Side = "left",
    n_lesions: int = 1,
    noise_hu: float = 3.0,
    seed: int = 0,
    lesion_drop_hu: float = LESION_DROP_HU,
    variation: bool = False,
) -> Phantom:
    """Make one head CT phantom.

    Args:
        shape: Array shape ``(z, y, x)``.
        spacing: Voxel spacing in mm, ``(z, y, x)``; the anatomy scales with the
            field of view, so the same ``shape`` gives the same head in voxels.
        side: Hemisphere of the lesions (``"none"`` for a healthy case).
        n_lesions: Number of lesions (ignored for ``side="none"``).
        noise_hu: Standard deviation of the Gaussian noise in HU.
        seed: Seed of the case's random generator; equal seeds give equal phantoms.
        lesion_drop_hu: How much darker lesions are than the tissue they replace (acute
            ischaemia: a few HU).
        variation: Add the case-to-case variation of real acquisitions, drawn from a
            generator of its own (the anatomy and lesions stay those of ``seed``): a
            calibration offset of the soft tissue (-6..6 HU), a smooth additive field
            (beam hardening, up to 6 HU), the noise level (2..7 HU instead of
            ``noise_hu``) and the head's in-plane rotation (-12..12 degrees).

    Returns:
        A :class:`Phantom`.

    Example:
        >>> p = make_stroke_phantom(seed=1, side="right")
        >>> p.lesion_side, p.image.shape
        ('right', (48, 64, 64))
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3D with every size >= 16, got {shape}")
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = [s / 2.0 - 0.5 for s in shape]
    # a little case-to-case variation in head size and position
    head_r = [s * rng.uniform(0.40, 0.46) for s in shape]
    centre = [c + rng.uniform(-1.5, 1.5) for c in centre[:2]] + [centre[2]]
    skull_t = max(2.0, min(shape) * 0.05)
    head = _ellipsoid(grid, centre, head_r)
    inner = _ellipsoid(grid, centre, [r - skull_t for r in head_r])
    brain = _ellipsoid(grid, centre, [r - skull_t - 1.0 for r in head_r])

    # grey/white texture: smooth noise thresholded into a white-matter core
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.0)
    texture = (texture + texture[..., ::-1]) / 2.0  # anatomy is roughly symmetric
    depth = ndimage.distance_transform_edt(brain)
    white = brain & (depth > 4.0) & (texture > -0.02)

    image = np.full(shape, HU_AIR, np.float32)
    image[head] = HU_SKULL
    image[inner] = HU_CSF  # thin CSF layer between skull and brain
    image[brain] = HU_GREY
    image[white] = HU_WHITE

    # lateral ventricles, mirror images of each other
    vent_r = [shape[0] * 0.12, shape[1] * 0.12, shape[2] * 0.05]
    dx = shape[2] * 0.07
    ventricles = np.zeros(shape, bool)
    for sgn in (-1, 1):
        ventricles |= _ellipsoid(grid, [centre[0], centre[1], centre[2] + sgn * dx], vent_r)
    image[ventricles & brain] = HU_CSF

    lesion = np.zeros(shape, bool)
    if side != "none":
        sides = ["left", "right"] if side == "both" else [side] * max(1, n_lesions)
        for s in sides:
            sgn = 1.0 if s == "left" else -1.0
            r = [rng.uniform(0.08, 0.14) * n for n in shape]
            c = [centre[0] + rng.uniform(-0.1, 0.1) * shape[0],
                 centre[1] + rng.uniform(-0.15, 0.15) * shape[1],
                 centre[2] + sgn * rng.uniform(0.18, 0.24) * shape[2]]
            blob = _ellipsoid(grid, c, r) & brain & ~ventricles
            lesion |= blob
        image[lesion] -= lesion_drop_hu

    if variation:
        vary = np.random.default_rng([seed, 1])
        tissue = inner | brain
        image[tissue] += vary.uniform(-6.0, 6.0)
        field = ndimage.gaussian_filter(vary.standard_normal(shape).astype(np.float32), [s / 4.0 for s in shape])
        image[tissue] += (field / (np.abs(field).max() + 1e-6) * vary.uniform(0.0, 6.0))[tissue]
        noise_hu = vary.uniform(2.0, 7.0)
        angle = vary.uniform(-12.0, 12.0)
        image = ndimage.rotate(image, angle, axes=(1, 2), reshape=False, order=1, cval=HU_AIR)
        brain = ndimage.rotate(brain.astype(np.uint8), angle, axes=(1, 2), reshape=False, order=0) > 0
        lesion = ndimage.rotate(lesion.astype(np.uint8), angle, axes=(1, 2), reshape=False, order=0) > 0
    image = ndimage.gaussian_filter(image, 0.6)  # partial volume at edges
    image += rng.normal(0.0, noise_hu, shape).astype(np.float32)
    return Phantom(image=image.astype(np.float32), brain=brain, lesion=lesion,
                   spacing=tuple(float(s) for s in spacing))


def write_image(array: np.ndarray, spacing: Sequence[float], path: Path | str,
                origin: Sequence[float] | None = None) -> None:
    """Write a ``(z, y, x)`` array with ``(z, y, x)`` spacing as an image file (e.g. ``.nii.gz``)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing([float(s) for s in reversed(spacing)])
    if origin is not None:
        img.SetOrigin([float(o) for o in origin])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def write_phantom_dataset(raw_folder: Path | str, dataset_id: int, name: str, n_train: int,
                          n_test: int = 0, shape: Sequence[int] = (48, 64, 64),
                          spacing: Sequence[float] = (1.0, 1.0, 1.0), label: str = "lesion",
                          seed: int = 0, first_case: int = 0,
                          first_test_case: Optional[int] = None,
                          lesion_drop_hu: float = LESION_DROP_HU, variation: bool = False) -> Path:
    """Write an nnU-Net raw dataset of phantoms; return its folder.

    Training cases go to ``imagesTr``/``labelsTr``, test cases to ``imagesTs`` with
    their labels in ``labelsTs`` (kept apart for evaluation). Lesion sides cycle
    through left, right and none so every split holds healthy and diseased cases.

    Args:
        raw_folder: ``nnUNet_raw``.
        dataset_id: Three-digit id; the folder is ``Dataset{id:03d}_{name}``.
        label: ``"lesion"`` (segmentation target) or ``"brain"`` (the brain mask, as
            SSL datasets use so that nnU-Net's intensity statistics come from the brain).
        seed: Seed of the whole dataset; case ``i`` is the same phantom in every dataset
            written with the same seed.
        first_case: Index of the first training case (``case_{first_case:03d}``).
        first_test_case: Index of the first test case (default: right after the training
            cases). Datasets of one seed share cases of equal index, so an SSL dataset can
            hold a labelled dataset's training images and none of its test images.
        variation: Acquisition variation per case (see :func:`make_stroke_phantom`).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if label not in ("lesion", "brain"):
        raise ValueError(f"label must be 'lesion' or 'brain', got {label!r}")
    folder = Path(raw_folder) / f"Dataset{dataset_id:03d}_{name}"
    sides: list[Side] = ["left", "right", "left", "none"]
    first_test_case = first_case + n_train if first_test_case is None else first_test_case
    cases = [(i, "Tr") for i in range(first_case, first_case + n_train)]
    cases += [(i, "Ts") for i in range(first_test_case, first_test_case + n_test)]
    for i, split in cases:
        p = make_stroke_phantom(shape, spacing, side=sides[i % len(sides)], seed=seed * 10007 + i,
                                lesion_drop_hu=lesion_drop_hu, variation=variation)
        case = f"case_{i:03d}"
        write_image(p.image, spacing, folder / f"images{split}" / f"{case}_0000.nii.gz")
        target = p.lesion if label == "lesion" else p.brain
        write_image(target.astype(np.uint8), spacing, folder / f"labels{split}" / f"{case}.nii.gz")
    generate_dataset_json(str(folder), channel_names={0: "CT"},
                          labels={"background": 0, label: 1}, num_training_cases=n_train,
                          file_ending=".nii.gz", dataset_name=folder.name)
    return folder


def write_clot_phantom_inputs(folder: Path | str, n_cases: int = 5, shape: Sequence[int] = (20, 48, 48)) -> None:
    """Inputs of ``nnunet-ssl clot-dataset`` made of phantoms: ``cta/``, ``ncct/`` and ``labels/``.

    Each CTA is a phantom head (a lesion blob stands in for the clot, its label); its NCCT is the same
    head moved rigidly (3 degrees about z, 2 to 3 mm) on a larger grid of its own, as an NCCT of the
    same patient scanned apart from the CTA. Not angiography: a stand-in to try the commands on.

    Example:
        >>> write_clot_phantom_inputs("clot_inputs")  # doctest: +SKIP
    """
    import SimpleITK as sitk

    folder = Path(folder)
    move = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, np.deg2rad(3.0), (2.0, -2.5, 1.5))
    z, y, x = (int(s) for s in shape)
    for i in range(n_cases):
        p = make_stroke_phantom(shape, side="left" if i % 2 else "right", seed=10 + i)
        cta = sitk.GetImageFromArray(p.image)
        cta.SetOrigin((-x / 2, -y / 2, -z / 2))
        label = sitk.GetImageFromArray(p.lesion.astype(np.uint8))
        label.CopyInformation(cta)
        grid = sitk.Image([x + 4, y + 4, z + 4], sitk.sitkFloat32)
        grid.SetOrigin((-x / 2 - 2, -y / 2 - 2, -z / 2 - 2))
        for role, image in (("cta", cta), ("ncct", sitk.Resample(cta, grid, move, sitk.sitkLinear, -1000.0)),
                            ("labels", label)):
            (folder / role).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(folder / role / f"cs{i}.nii.gz"))


def write_ctp_phantom_inputs(folder: Path | str, n_cases: int = 5, shape: Sequence[int] = (20, 48, 48),
                             spacing: Sequence[float] = (2.0, 0.9, 0.9)) -> None:
    """Inputs of ``nnunet-ssl ctp-dataset`` made of phantoms: ``CBF/``, ``CBV/``, ``TTP/``, ``Tmax/``,
    ``MIP/`` and ``labels/`` (0 background, 1 penumbra, 2 core).

    The core is the phantom's lesion, the penumbra a 3-voxel shell around it inside the brain; CBF and
    CBV are low there and TTP and Tmax late (more so in the core), with noise; the MIP is the phantom CT.
    The values are illustrative, not physiological.

    Example:
        >>> write_ctp_phantom_inputs("ctp_inputs")  # doctest: +SKIP
    """
    folder = Path(folder)
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        p = make_stroke_phantom(shape, spacing, side="left" if i % 2 else "right", seed=20 + i)
        core = p.lesion
        penumbra = ndimage.binary_dilation(core, iterations=3) & p.brain & ~core
        brain = p.brain.astype(np.float32)

        def noisy(array, sd):
            return (array + rng.normal(0, sd, core.shape)).astype(np.float32)

        maps = {"CBF": noisy(brain * (50 - 20 * penumbra - 40 * core), 2),
                "CBV": noisy(brain * (4 - 1 * penumbra - 3 * core), 0.2),
                "TTP": noisy(brain * (10 + 6 * penumbra + 8 * core), 2),
                "Tmax": noisy(brain * (2 + 6 * penumbra + 10 * core), 2),
                "MIP": p.image}
        for role, array in [*maps.items(), ("labels", (penumbra + 2 * core).astype(np.uint8))]:
            write_image(array, spacing, folder / role / f"p{i}.nii.gz")
