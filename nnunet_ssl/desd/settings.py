"""DeSD settings: the paper's defaults, overridable from the nnU-Net plans.

Settings live where nnU-Net users already keep a training recipe: in the plans
JSON, as an ``"ssl"`` block inside a configuration. A configuration that
``inherits_from`` another inherits its ``ssl`` block too (nnU-Net replaces whole
keys, so a child's ``ssl`` block replaces the parent's; names it leaves out take
the defaults below).

Example plans fragment::

    "3d_fullres_ssl": {
        "inherits_from": "3d_fullres",
        "ssl": {"num_epochs": 10, "batch_size": 4, "view_size": [16, 64, 64], "out_dim": 4096}
    }
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from nnunet_ssl.desd.recipe import resolve as resolve_recipe


@dataclass(frozen=True)
class DeSDSettings:
    """Every setting of DeSD pretraining, with the defaults of the seed paper (sections 3.4-3.4.2).

    Where the paper is silent the value follows DINO (Caron et al. 2021).
    """

    BLOCK: ClassVar[str] = "ssl"  # the block of the plans configuration the settings are read from

    # "adaptive": momentum, lr, K, temperatures and warm-ups not set here follow the run's batch and
    # length (nnunet_ssl.desd.recipe; the paper's values at the paper's run); "paper": the paper's values
    recipe: str = "adaptive"
    # training length (nnU-Net's names)
    num_epochs: int = 100
    num_iterations_per_epoch: int = 9600
    num_val_iterations_per_epoch: int = 50
    batch_size: int = 64  # total over all GPUs, as nnU-Net's plans batch_size
    # views: two crops of one region, (z, y, x) voxels; the paper used 16 x 112 x 112
    view_size: tuple[int, ...] = (16, 112, 112)
    # where views are drawn: "slab" (paper 3.4.1) or "region" (around a random foreground voxel)
    view_sampling: str = "slab"
    slab_depth: int = 24  # slices along the first array axis
    slab_min_brain: float = 0.4  # slabs with less brain are redrawn with probability 1 - brain fraction
    # "region" sampling: how far (fraction of the view size, per axis) each view's centre moves
    view_jitter: float = 0.25
    # symmetry augmentation (paper 3.7.3): the dataset channel holding the contralateral image
    symmetry_channel: Optional[int] = None
    symmetry_prob: float = 0.7
    # projection heads
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    use_bn_in_head: bool = True
    # one weight-normalised last layer for all student heads (opt-in, not the paper's set-up)
    shared_last_layer: bool = False
    # per-stage weights of the student heads' losses (None: all equal); normalised to sum to 1
    head_weights: Optional[tuple[float, ...]] = None
    # temperatures and centring
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 10
    center_momentum: float = 0.9
    # teacher EMA: momentum on a cosine schedule from momentum_teacher to 1
    momentum_teacher: float = 0.9996
    # optimiser (AdamW) and schedules
    lr: float = 0.0005  # base learning rate for a total batch of 256, scaled linearly (DINO)
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 1e-5
    clip_grad: float = 3.0  # 0 disables clipping
    freeze_last_layer_epochs: int = 1
    # monitoring: RankMe on fixed validation views, and the collapse guard
    rankme_batches: int = 4
    # linear probe each epoch (optional): a preprocessed folder of labelled cases, absolute or relative to
    # nnUNet_preprocessed, normalised as the SSL data (e.g. "Dataset502_Stroke/nnUNetPlans_from_Dataset500_3d_fullres")
    probe_data: Optional[str] = None
    monitor_warmup_epochs: int = 5  # epochs before checkpoint_best_rankme.pth and the collapse guard start
    collapse_patience: int = 3  # epochs in a row that look collapsed before the guard acts
    stop_on_collapse: bool = False

    def __post_init__(self):
        if self.head_weights is not None and any(w < 0 for w in self.head_weights):
            raise ValueError(f"head_weights must be non-negative, got {self.head_weights}")
        if any(int(v) < 1 for v in self.view_size):
            raise ValueError(f"view_size must be positive, got {self.view_size}")
        for name in ("num_epochs", "num_iterations_per_epoch", "batch_size", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.center_momentum <= 1 or not 0 <= self.momentum_teacher <= 1:
            raise ValueError("center_momentum and momentum_teacher must lie in [0, 1]")
        if self.view_sampling not in ("slab", "region"):
            raise ValueError(f"view_sampling must be 'slab' or 'region', got {self.view_sampling!r}")
        if self.view_sampling == "slab" and len(self.view_size) == 3 and self.slab_depth < int(self.view_size[0]):
            raise ValueError(f"slab_depth {self.slab_depth} is thinner than the views "
                             f"({self.view_size[0]} slices); raise slab_depth or use view_sampling 'region'")
        if not 0 <= self.symmetry_prob <= 1 or not 0 <= self.slab_min_brain <= 1:
            raise ValueError("symmetry_prob and slab_min_brain must lie in [0, 1]")

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]] = None) -> "DeSDSettings":
        """Build settings from a (possibly partial) mapping; unknown names are an error.

        Example:
            >>> DeSDSettings.from_dict({"out_dim": 4096}).out_dim
            4096
        """
        import typing

        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown SSL setting(s) {unknown}. Known settings: {sorted(known)}")
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}

        def shown(value: Any) -> str:
            return json.dumps(value) if isinstance(value, (str, int, float, list, tuple, type(None))) else repr(value)

        def scalar(name: str, kind: type, value: Any, example: Any):
            # JSON gives ints for whole floats and the command line bare strings: coerce what is exact, name the rest
            ok = {bool: isinstance(value, bool),
                  int: isinstance(value, int) and not isinstance(value, bool)
                  or isinstance(value, float) and value.is_integer(),
                  float: isinstance(value, (int, float)) and not isinstance(value, bool),
                  str: isinstance(value, str)}[kind]
            if not ok:
                raise ValueError(f"SSL setting '{name}' must be {words[kind]} (e.g. {json.dumps(example)}), "
                                 f"got {shown(value)}")
            return kind(value)

        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            kind, value = hints[f.name], values[f.name]
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            if type(None) in typing.get_args(kind):  # Optional[...]
                if value is None:
                    continue
                kind = args[0]
                args = list(typing.get_args(kind))
            if typing.get_origin(kind) is tuple:
                example = list(f.default) if f.default is not None else [1.0, 1.0]
                if not isinstance(value, (list, tuple)) or not value:
                    raise ValueError(f"SSL setting '{f.name}' must be a list (e.g. {json.dumps(example)}), "
                                     f"got {shown(value)}")
                values[f.name] = tuple(scalar(f.name, args[0], v, example[0]) for v in value)
            else:
                example = f.default if f.default is not None else {int: 1, float: 0.5, bool: True, str: "x"}[kind]
                values[f.name] = scalar(f.name, kind, value, example)
        values = resolve_recipe(values, cls.field_defaults())
        return cls(**values)

    @classmethod
    def field_defaults(cls) -> dict:
        """Every setting's default (the paper's run)."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> "DeSDSettings":
        """Read the ``ssl`` block of an nnU-Net plans configuration (a dict)."""
        return cls.from_dict(configuration.get("ssl"))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("view_size", "head_weights"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    def replace(self, **changes) -> "DeSDSettings":
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=1)
