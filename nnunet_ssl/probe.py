"""Linear probe of a frozen encoder: how well do its features tell lesion from healthy brain?

A cheap measure of what pretraining put into an encoder, before (and beside) any
fine-tuning. Every encoder stage's output (nnU-Net's ``return_skips``) is
upsampled trilinearly to the input grid and concatenated into one feature
vector per voxel; a balanced, seeded sample of lesion and healthy-brain voxels
of every training case fits a logistic regression on standardised features
(scikit-learn); the result is the ROC AUC on the voxels of held-out cases.

AUC 0.5 means the features carry no lesion information a linear read-out can
use; an encoder that passes the image intensity through (stage 0 = the image)
already separates the phantoms' hypodense lesions well, so the probe is a
relative measure: compare encoders (random initialisation, SSL teacher at
several epochs) on the same cases and seed.

Cases are :class:`ProbeCase` (the arrays nnU-Net's preprocessing writes);
:func:`load_preprocessed_cases` reads them from an nnU-Net preprocessed folder,
:func:`encoder_from_ssl_checkpoint` and :func:`encoder_from_plans` give encoders.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_ssl.errors import UserError


@dataclass(frozen=True)
class ProbeCase:
    """One case in the encoder's input space.

    Attributes:
        identifier: The case's name (in error messages).
        image: ``(C, Z, Y, X)`` float32, normalised as nnU-Net's preprocessing does.
        lesion: ``(Z, Y, X)`` bool, lesion voxels.
        brain: ``(Z, Y, X)`` bool, the brain; healthy brain is ``brain & ~lesion``.
    """

    identifier: str
    image: np.ndarray
    lesion: np.ndarray
    brain: np.ndarray

    def __post_init__(self):
        if self.image.ndim != 4:
            raise UserError(f"case {self.identifier}: image must be (C, Z, Y, X), got shape {self.image.shape}")
        for name in ("lesion", "brain"):
            if getattr(self, name).shape != self.image.shape[1:]:
                raise UserError(f"case {self.identifier}: {name} mask shape {getattr(self, name).shape} differs "
                                f"from the image grid {self.image.shape[1:]}")


def _stage_outputs(encoder: torch.nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    out = encoder(image)
    return [out] if torch.is_tensor(out) else list(out)


def _pool_channels(x: torch.Tensor, n: Optional[int]) -> torch.Tensor:
    """Average ``(1, C, ...)`` into ``n`` channel groups (adaptive pooling over channels)."""
    if n is None or x.shape[1] <= n:
        return x
    c, spatial = x.shape[1], x.shape[2:]
    flat = x.reshape(c, -1).T.unsqueeze(0)  # (1, voxels, C): pool along C
    return F.adaptive_avg_pool1d(flat, n)[0].T.reshape(1, n, *spatial)


def voxel_features(encoder: torch.nn.Module, image: np.ndarray, voxels: np.ndarray,
                   channels_per_stage: Optional[int] = None, device: str | torch.device = "cpu",
                   stages: Optional[Sequence[int]] = None) -> np.ndarray:
    """Features of the given voxels: every stage's output, upsampled to the input grid, concatenated.

    The encoder runs once on the whole image, in eval mode and without gradients; its
    training mode is restored afterwards. Each stage is upsampled with
    ``F.interpolate(mode="trilinear")`` and read at ``voxels`` before the next, so only
    one stage lives at full resolution at a time.

    Args:
        encoder: Module mapping ``(1, C, Z, Y, X)`` to a list of ``(1, C_s, Z_s, Y_s, X_s)``
            (nnU-Net's encoders with ``return_skips=True``) or to one tensor.
        image: ``(C, Z, Y, X)`` float32.
        voxels: ``(N, 3)`` integer ``(z, y, x)`` indices.
        channels_per_stage: Average each stage's channels into at most this many groups
            (``None``: keep all).
        device: Where the encoder runs (it is moved there).
        stages: Indices of the stage outputs to use, in the encoder's order (negative
            counts from the deepest: ``[-1]`` is the bottleneck); ``None``: all.

    Returns:
        ``(N, F)`` float32, ``F`` the sum of the (pooled) stage channel counts.

    Example:
        >>> enc = lambda x: [x, F.avg_pool3d(x, 2)]
        >>> img = np.zeros((1, 4, 4, 4), np.float32)
        >>> voxel_features(enc, img, np.array([[0, 0, 0], [3, 3, 3]])).shape
        (2, 2)
    """
    voxels = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
    is_module = isinstance(encoder, torch.nn.Module)
    was_training = encoder.training if is_module else False
    if is_module:
        encoder.to(device).eval()
    columns = []
    try:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
            grid = tuple(image.shape[1:])
            idx = tuple(torch.from_numpy(voxels[:, i]).to(device) for i in range(3))
            outputs = _stage_outputs(encoder, x)
            if stages is not None:
                try:
                    outputs = [outputs[i] for i in stages]
                except IndexError:
                    raise UserError(f"stages {list(stages)} asked of an encoder with {len(outputs)} stage "
                                    "outputs") from None
                if not outputs:
                    raise UserError("stages is empty: name at least one stage output (e.g. [-1])")
            for stage in outputs:
                stage = _pool_channels(stage.float(), channels_per_stage)
                if tuple(stage.shape[2:]) != grid:
                    stage = F.interpolate(stage, size=grid, mode="trilinear", align_corners=False)
                columns.append(stage[0][:, idx[0], idx[1], idx[2]].T.cpu())
                del stage
    finally:
        if is_module and was_training:
            encoder.train()
    return torch.cat(columns, dim=1).numpy().astype(np.float32)


def sample_voxels(case: ProbeCase, voxels_per_class: int, seed: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A balanced, seeded sample of lesion and healthy-brain voxels of one case.

    ``k = min(voxels_per_class, lesion voxels, healthy voxels)`` of each class, drawn
    without replacement by ``np.random.default_rng(seed)`` (an int or a sequence of ints).

    Returns:
        ``(voxels (2k, 3), labels (2k,))``: lesion voxels (label 1) first, then healthy (0).

    Raises:
        UserError: The case has no lesion voxels or no healthy brain voxels.

    Example:
        >>> lesion = np.zeros((4, 4, 4), bool); lesion[0, 0, :2] = True
        >>> case = ProbeCase("c", np.zeros((1, 4, 4, 4), np.float32), lesion, np.ones((4, 4, 4), bool))
        >>> v, y = sample_voxels(case, 10, seed=0)
        >>> v.shape, y.tolist()
        ((4, 3), [1, 1, 0, 0])
    """
    lesion = np.asarray(case.lesion, bool)
    healthy = np.asarray(case.brain, bool) & ~lesion
    n_lesion, n_healthy = int(lesion.sum()), int(healthy.sum())
    if n_lesion == 0:
        raise UserError(f"case {case.identifier} has no lesion voxels; the probe needs lesion and healthy "
                        "brain voxels in every case (leave healthy cases out)")
    if n_healthy == 0:
        raise UserError(f"case {case.identifier} has no healthy brain voxels (brain mask empty or all lesion)")
    rng = np.random.default_rng(seed)
    k = min(int(voxels_per_class), n_lesion, n_healthy)
    picked = [np.argwhere(m)[rng.choice(n, size=k, replace=False)] for m, n in
              ((lesion, n_lesion), (healthy, n_healthy))]
    return np.concatenate(picked), np.repeat(np.array([1, 0], np.int64), k)


def _dataset(encoder, cases: Sequence[ProbeCase], voxels_per_class: int, seed: int, stream: int,
             channels_per_stage: Optional[int], device, stages=None) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, case in enumerate(cases):
        # one stream per (seed, train/test, position): a case's sample does not depend on the others
        voxels, labels = sample_voxels(case, voxels_per_class, seed=(seed, stream, i))
        xs.append(voxel_features(encoder, case.image, voxels, channels_per_stage, device, stages))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def linear_probe_auc(encoder: torch.nn.Module, train_cases: Sequence[ProbeCase], test_cases: Sequence[ProbeCase],
                     voxels_per_class: int = 500, seed: int = 0, channels_per_stage: Optional[int] = None,
                     C: float = 1.0, device: str | torch.device = "cpu",
                     stages: Optional[Sequence[int]] = None) -> float:
    """ROC AUC of a logistic regression on frozen encoder features, fitted on ``train_cases``.

    Args:
        encoder: See :func:`voxel_features`.
        train_cases: Cases whose sampled voxels fit the probe (each needs lesion voxels).
        test_cases: Held-out cases whose sampled voxels score it.
        voxels_per_class: At most this many lesion and as many healthy voxels per case.
        seed: Seeds the voxel sampling (the fit itself is deterministic).
        channels_per_stage: See :func:`voxel_features`.
        C: Inverse L2 regularisation strength of ``LogisticRegression``.
        device: Where the encoder runs.
        stages: See :func:`voxel_features`.

    Returns:
        ``sklearn.metrics.roc_auc_score`` of the probe's lesion probability on the test voxels.

    Example:
        >>> identity = lambda x: [x]  # stage 0 = the image: dark lesions separate
        >>> linear_probe_auc(identity, train, test) > 0.9  # doctest: +SKIP
        True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not train_cases or not test_cases:
        raise UserError(f"the probe needs training and held-out cases, got {len(train_cases)} and {len(test_cases)}")
    seen = {c.identifier for c in train_cases} & {c.identifier for c in test_cases}
    if seen:
        raise UserError(f"cases {sorted(seen)} are both training and held-out cases of the probe")
    x_train, y_train = _dataset(encoder, train_cases, voxels_per_class, seed, 0, channels_per_stage, device, stages)
    x_test, y_test = _dataset(encoder, test_cases, voxels_per_class, seed, 1, channels_per_stage, device, stages)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    probe.fit(x_train, y_train)
    return float(roc_auc_score(y_test, probe.predict_proba(x_test)[:, 1]))


# ---------------------------------------------------------------- loading
def window_brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels of channel 0 strictly inside its value range: unclipped by nnU-Net's CT normalisation.

    nnU-Net's ``CTNormalization`` clips to the 0.5-99.5 percentiles of the
    foreground (for the SSL plans: the brain) before standardising, so air and
    bone sit at the two extremes and the intracranial soft tissue lies in between.
    A good brain mask for phantoms (no scalp); real scans need a real brain mask.

    Example:
        >>> window_brain_mask(np.array([[[[-2.0, 0.1, 3.0]]]])).tolist()
        [[[False, True, False]]]
    """
    x = np.asarray(image[0])
    lo, hi = float(x.min()), float(x.max())
    eps = 1e-4 * max(hi - lo, 1e-12)
    return (x > lo + eps) & (x < hi - eps)


def load_preprocessed_cases(folder: str | os.PathLike, identifiers: Optional[Sequence[str]] = None,
                            brain_folder: Optional[str | os.PathLike] = None) -> list[ProbeCase]:
    """Cases from an nnU-Net preprocessed data folder (``nnUNet_preprocessed/DatasetXXX_Name/<data identifier>``).

    ``data`` is the image, ``seg > 0`` the lesion (``-1``, outside the cropped
    region, is not lesion). The brain is ``seg > 0`` of the same case in
    ``brain_folder`` (a dataset of the same images with brain labels, such as an
    SSL dataset, preprocessed with the same plans) or else :func:`window_brain_mask`.

    Args:
        folder: The preprocessed folder (nnU-Net's ``.b2nd`` or ``.npz`` layout).
        identifiers: Cases to load (default: all, sorted).
        brain_folder: Optional folder with brain labels for the same identifiers.

    Example:
        >>> cases = load_preprocessed_cases(os.environ["nnUNet_preprocessed"] + "/Dataset991_DemoStroke/"
        ...                                 "nnUNetPlans_3d_fullres")  # doctest: +SKIP
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"preprocessed folder {folder} does not exist; preprocess the dataset first")
    dataset = infer_dataset_class(str(folder))(str(folder))
    ids = list(dataset.identifiers) if identifiers is None else list(identifiers)
    missing = sorted(set(ids) - set(dataset.identifiers))
    if missing:
        raise UserError(f"cases {missing} are not in {folder}")
    brains = None
    if brain_folder is not None:
        brains = infer_dataset_class(str(brain_folder))(str(brain_folder))
        absent = sorted(set(ids) - set(brains.identifiers))
        if absent:
            raise UserError(f"cases {absent} have no brain labels in {brain_folder}")
    cases = []
    for identifier in ids:
        data, seg, _, _ = dataset.load_case(identifier)
        image = np.asarray(data, dtype=np.float32)
        lesion = np.asarray(seg[0]) > 0
        brain = np.asarray(brains.load_case(identifier)[1][0]) > 0 if brains is not None else window_brain_mask(image)
        cases.append(ProbeCase(identifier, image, lesion, brain))
    return cases


def phantom_probe_cases(plans_file: str | os.PathLike, n_cases: int, shape: Sequence[int],
                        lesion_drop_hu: float, seed: int = 0, configuration: str = "3d_fullres",
                        dataset_json_file: Optional[str | os.PathLike] = None) -> list[ProbeCase]:
    """Lesion phantoms (:func:`nnunet_ssl.phantom.make_stroke_phantom`) preprocessed as the plans say.

    Each phantom goes through nnU-Net's own ``DefaultPreprocessor.run_case_npy`` with the
    plans' configuration (cropping, CT normalisation with the dataset's intensity
    statistics, resampling), so a case is what an encoder trained on those plans sees.
    Lesions alternate between the left and right hemisphere; case ``i`` is the phantom
    of seed ``seed * 10007 + i``, so two calls with different seeds share no case.

    Args:
        plans_file: ``nnUNetPlans.json`` of a preprocessed dataset.
        n_cases: Number of cases (all with a lesion).
        shape: Phantom array shape ``(z, y, x)`` at 1 mm.
        lesion_drop_hu: Lesion contrast (see :func:`~nnunet_ssl.phantom.make_stroke_phantom`).
        seed: Seed of the set of cases.
        configuration: The plans configuration.
        dataset_json_file: The dataset's ``dataset.json`` (default: beside the plans).

    Example:
        >>> cases = phantom_probe_cases("nnUNet_preprocessed/Dataset501_Tiny/nnUNetPlans.json", 10,
        ...                             (32, 40, 40), 8.0, seed=1)  # doctest: +SKIP
    """
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ssl.phantom import make_stroke_phantom

    plans_file = Path(plans_file)
    dataset_json_file = Path(dataset_json_file) if dataset_json_file else plans_file.parent / "dataset.json"
    for f in (plans_file, dataset_json_file):
        if not f.is_file():
            raise UserError(f"{f} does not exist; plan and preprocess the dataset first")
    if n_cases < 1:
        raise UserError(f"n_cases must be at least 1, got {n_cases}")
    manager = PlansManager(json.loads(plans_file.read_text(encoding="utf-8")))
    cm = manager.get_configuration(configuration)
    dataset_json = json.loads(dataset_json_file.read_text(encoding="utf-8"))
    preprocessor = DefaultPreprocessor(verbose=False)
    cases = []
    for i in range(n_cases):
        p = make_stroke_phantom(tuple(shape), side=("left", "right")[i % 2], seed=seed * 10007 + i,
                                lesion_drop_hu=lesion_drop_hu)
        # one label map carries both masks through nnU-Net's cropping and resampling: 1 brain, 2 lesion
        labels = (p.brain | p.lesion).astype(np.int16) + p.lesion
        data, seg, *_ = preprocessor.run_case_npy(p.image[None], labels[None], {"spacing": [1.0, 1.0, 1.0]},
                                                  manager, cm, dataset_json)
        cases.append(ProbeCase(f"phantom_{seed}_{i}", np.asarray(data, np.float32), seg[0] == 2, seg[0] >= 1))
    return cases


# ---------------------------------------------------------------- encoders
def _network(arch: dict, num_input_channels: int) -> torch.nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["arch_kwargs_req_import"],
                                  int(num_input_channels), 2, allow_init=True, deep_supervision=False)


def encoder_from_ssl_checkpoint(path: str | os.PathLike, source: str = "teacher") -> torch.nn.Module:
    """The encoder (``return_skips=True``) of a DeSD checkpoint, with the teacher's or student's weights.

    The architecture comes from the checkpoint's ``ssl`` entry; loading is strict.

    Example:
        >>> enc = encoder_from_ssl_checkpoint("fold_all/checkpoint_final.pth")  # doctest: +SKIP
    """
    from nnunet_ssl.transfer import encoder_state, is_foreign, load_ssl_checkpoint

    checkpoint = load_ssl_checkpoint(path)
    if is_foreign(checkpoint):
        raise UserError(f"{path} is not a DeSD checkpoint of this package; the probe reads those only")
    meta = checkpoint["ssl"]
    network = _network(meta["architecture"], meta["num_input_channels"])
    key = meta.get("target_encoder_key", "encoder")
    state = {k[len(key) + 1:]: v for k, v in encoder_state(checkpoint, source).items()}
    encoder = network.get_submodule(key)
    encoder.load_state_dict(state, strict=True)
    encoder.return_skips = True
    return encoder.eval()


def encoder_from_plans(plans_file: str | os.PathLike, configuration: str = "3d_fullres",
                       num_input_channels: int = 1, seed: int = 0) -> torch.nn.Module:
    """An untrained encoder (nnU-Net's initialisation, seeded) of the network the plans describe.

    The global random state is left as it was.

    Example:
        >>> enc = encoder_from_plans("nnUNet_preprocessed/Dataset990_DemoSSL/nnUNetPlans.json")  # doctest: +SKIP
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_file = Path(plans_file)
    if not plans_file.is_file():
        raise UserError(f"plans file {plans_file} does not exist")
    manager = PlansManager(json.loads(plans_file.read_text(encoding="utf-8")))
    if configuration not in manager.available_configurations:
        raise UserError(f"configuration {configuration!r} not in {plans_file.name}; available: "
                        f"{manager.available_configurations}")
    cm = manager.get_configuration(configuration)
    arch = {"network_class_name": cm.network_arch_class_name, "arch_kwargs": cm.network_arch_init_kwargs,
            "arch_kwargs_req_import": cm.network_arch_init_kwargs_req_import}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _network(arch, num_input_channels)
    encoder = network.encoder
    encoder.return_skips = True
    return encoder.eval()


# ---------------------------------------------------------------- monitoring
class ProbeMonitor:
    """The linear probe as a per-epoch score of an SSL run (``ssl.probe_data``).

    Loads the labelled cases of a preprocessed folder once; cases with lesion voxels are
    split alternately (in sorted order) into the probe's training and held-out halves, and
    :meth:`score` fits the probe on the encoder as it is now.

    Args:
        folder: A preprocessed data folder of labelled cases, prepared with the same
            normalisation as the SSL dataset (e.g. the target of ``nnunet-ssl plan-target``).
        voxels_per_class: Voxels sampled per class and case.
        seed: Seeds the voxel sampling; the same every epoch, so scores are comparable.
        stages: Encoder stage outputs the probe reads (see :func:`voxel_features`); ``None``: all.

    Example:
        >>> monitor = ProbeMonitor("nnUNet_preprocessed/Dataset991_DemoStroke/"
        ...                        "nnUNetPlans_from_Dataset990_3d_fullres")  # doctest: +SKIP
        >>> monitor.score(trainer.network.teacher.encoder)  # doctest: +SKIP
        0.83
    """

    def __init__(self, folder: str | os.PathLike, voxels_per_class: int = 500, seed: int = 0,
                 stages: Optional[Sequence[int]] = None):
        cases = [c for c in load_preprocessed_cases(folder) if c.lesion.any()]
        if len(cases) < 2:
            raise UserError(f"the probe needs at least two cases with lesion voxels in {folder}, found {len(cases)}")
        self._set(cases[0::2], cases[1::2], voxels_per_class, seed, stages)

    def _set(self, train_cases, test_cases, voxels_per_class, seed, stages):
        if not train_cases or not test_cases:
            raise UserError(f"the probe needs training and held-out cases, got {len(train_cases)} and "
                            f"{len(test_cases)}")
        self.train_cases, self.test_cases = list(train_cases), list(test_cases)
        self.voxels_per_class, self.seed = voxels_per_class, seed
        self.stages = None if stages is None else tuple(stages)

    @classmethod
    def from_cases(cls, train_cases: Sequence[ProbeCase], test_cases: Sequence[ProbeCase],
                   voxels_per_class: int = 500, seed: int = 0,
                   stages: Optional[Sequence[int]] = None) -> "ProbeMonitor":
        """A monitor on given cases (e.g. :func:`phantom_probe_cases`) instead of a folder."""
        monitor = cls.__new__(cls)
        monitor._set(train_cases, test_cases, voxels_per_class, seed, stages)
        return monitor

    def score(self, encoder: torch.nn.Module, device: str | torch.device = "cpu") -> float:
        """Probe ROC AUC on the held-out half, with ``encoder`` frozen (its mode and ``return_skips`` kept)."""
        skips = getattr(encoder, "return_skips", None)
        if skips is not None:
            encoder.return_skips = True
        try:
            return linear_probe_auc(encoder, self.train_cases, self.test_cases, self.voxels_per_class, self.seed,
                                    device=device, stages=self.stages)
        finally:
            if skips is not None:
                encoder.return_skips = skips
