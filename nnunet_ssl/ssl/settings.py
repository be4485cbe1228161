"""Settings blocks of the pretext methods: one dataclass per method, read from the plans.

Every method keeps its settings in a block of its own in the trained plans
configuration (``ssl_mae``, ``ssl_genesis``, ...); names left out take the
dataclass defaults, unknown names and wrong types are refused by name. A
method declares its block name and one parser per setting; the run length
(nnU-Net's names) is shared::

    @dataclass(frozen=True)
    class MySettings(PretextSettings):
        BLOCK: ClassVar[str] = "ssl_mine"
        PARSERS: ClassVar[dict] = {"ratio": open_fraction}
        ratio: float = 0.5
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional


class BadSetting(ValueError):
    """A value a parser refuses; the message says what it must be (``"a positive integer"``)."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()


def positive_int(value) -> int:
    if not _is_int(value) or value < 1:
        raise BadSetting("a positive integer")
    return int(value)


def probability(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise BadSetting("a probability between 0 and 1")
    return float(value)


def open_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise BadSetting("a number between 0 and 1 (e.g. 0.6)")
    return float(value)


def positive_float(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BadSetting("a positive number")
    return float(value)


def non_negative_float(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise BadSetting("a number of at least 0")
    return float(value)


def open_or_one(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise BadSetting("a number above 0 and at most 1")
    return float(value)


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise BadSetting("true or false")
    return value


def sizes(value) -> Optional[tuple[int, ...]]:
    """A positive integer or a list of them, as a tuple; ``None`` stays ``None``."""
    if value is None:
        return None
    values = [value] if not isinstance(value, (list, tuple)) else list(value)
    if not values or not all(_is_int(v) and v >= 1 for v in values):
        raise BadSetting("a positive integer or a list of them (e.g. [4, 8, 8])")
    return tuple(int(v) for v in values)


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value) -> str:
        if value not in options:
            raise BadSetting(f"one of {list(options)}")
        return value
    return parse


@dataclass(frozen=True)
class PretextSettings:
    """The run length shared by every pretext method (nnU-Net's default trainer's values)."""

    BLOCK: ClassVar[str] = "ssl"
    PARSERS: ClassVar[dict] = {}

    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]] = None):
        """Validate a (possibly partial) mapping: unknown names and wrong types are refused by name.

        Example:
            >>> PretextSettings.from_dict({"num_epochs": 3.0}).num_epochs
            3
        """
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.BLOCK} setting(s) {unknown}; known: {known}")
        parsers = {"num_epochs": positive_int, "num_iterations_per_epoch": positive_int,
                   "num_val_iterations_per_epoch": positive_int, **cls.PARSERS}
        out = {}
        for name, value in values.items():
            try:
                out[name] = parsers[name](value)
            except BadSetting as e:
                raise ValueError(f"{cls.BLOCK} setting '{name}' must be {e}, got {json.dumps(value)}") from None
        out = {k: v for k, v in out.items() if v is not None}  # None: the default
        return cls(**out)

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]):
        """Read the method's block of an nnU-Net plans configuration (a dict)."""
        return cls.from_dict(configuration.get(cls.BLOCK))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class ContrastiveSettings(PretextSettings):
    """What the contrastive methods share: the two views of each patch, the projection head, the temperature.

    The views (:func:`nnunet_ssl.ssl.contrastive.random_view`) are drawn from nnU-Net's augmented patch:
    a random box of ``min_scale`` to 1 of each edge resized back to the patch, random flips, an
    intensity scale and shift of up to ``intensity`` and Gaussian noise of up to ``noise`` (in the
    units of the normalised image).
    """

    PARSERS: ClassVar[dict] = {"temperature": positive_float, "projection_dim": positive_int,
                               "hidden_dim": positive_int, "min_scale": open_or_one, "flip": boolean,
                               "intensity": non_negative_float, "noise": non_negative_float}

    temperature: float = 0.1  # SimCLR's
    projection_dim: int = 128
    hidden_dim: int = 512
    min_scale: float = 0.6
    flip: bool = True
    intensity: float = 0.1
    noise: float = 0.1

    def view_settings(self) -> dict:
        """The keyword arguments of :func:`~nnunet_ssl.ssl.contrastive.two_views`."""
        return {"min_scale": self.min_scale, "flip": self.flip, "intensity": self.intensity, "noise": self.noise}
