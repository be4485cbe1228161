"""The SSL recipe: settings that decide whether DINO-type training collapses, fitted to the run.

DINO-type training (DeSD here) has a handful of settings whose right value depends on how
many views a step sees and on how many steps the run has: the teacher's EMA momentum, the
learning rate, the number of prototypes ``K`` and the teacher temperature. The seed paper's
values are right for its run (a total batch of 64, 100 epochs of 9600 iterations); a short run
or a small GPU at the same values collapses (the teacher's outputs drift to uniform).

``recipe = "adaptive"`` (the default) derives these values from the run's own batch and length,
for every one of them that the plans do not set explicitly; at the paper's batch and length it
gives the paper's values. ``recipe = "paper"`` keeps the paper's values whatever the run.

The rules (each a pure function below, with its source):

* **Teacher momentum** (:func:`teacher_momentum`): the teacher averages the student over a
  fixed *fraction* of the run. The paper's 0.9996 over 960,000 iterations is an EMA horizon
  ``1 / (1 - m)`` of 2,500 iterations, 0.26% of the run; DINO's 0.996 over ~125,000 iterations
  (ImageNet, batch 1024, 100 epochs) is 250, 0.2%. The horizon is kept at 0.26% of the run's
  iterations, with ``m`` between 0.99 and 0.9996: with less than 0.99 the teacher follows the
  student too closely to give it a target of its own (DINO, section 5.2 ablations).
* **Learning rate** (:func:`base_learning_rate`): DINO scales the learning rate linearly with
  the batch (``lr * B / 256``). For Adam the square-root rule keeps the same training dynamics
  across batch sizes (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient
  algorithms"); below the paper's batch the effective rate follows ``sqrt(B / 64)`` from the
  paper's rate, so a batch of 4 trains at a quarter, not a sixteenth, of it.
* **Prototypes** (:func:`prototypes`): the paper's 65,536 prototypes for 128 teacher views a
  step is 512 per view; ``K`` keeps that ratio (the nearest power of two), between 1,024 and
  65,536. With many more prototypes than views the centring spreads the teacher's mass over
  prototypes no view ever selects, the route to uniform outputs.
* **Teacher temperature** (:func:`teacher_temperature`): DINO's warm-up starts at 0.04 and ends
  at 0.07 for large batches; a sharper teacher is the counterweight of centring, and with few
  views a step the centre is noisy, so the final temperature moves from 0.04 (one view pair a
  step) to the paper's 0.07 (64 pairs) in proportion to the batch.
* **Warm-ups** (:func:`warmups`): the paper warms the learning rate and the teacher
  temperature up over its first 10 of 100 epochs; the adaptive recipe keeps 10% of the run.

Example:
    >>> resolve({"batch_size": 64})["momentum_teacher"]  # the paper's batch and length
    0.9996
    >>> resolve({"batch_size": 4, "num_epochs": 30, "num_iterations_per_epoch": 50})["momentum_teacher"]
    0.99
"""
from __future__ import annotations

import math
from typing import Any, Mapping

RECIPES = ("adaptive", "paper")

# the seed paper's run (sections 3.4-3.4.2)
PAPER_BATCH = 64
PAPER_ITERATIONS = 100 * 9600
PAPER = {"momentum_teacher": 0.9996, "lr": 0.0005, "out_dim": 65536, "teacher_temp": 0.07,
         "warmup_teacher_temp": 0.04, "warmup_epochs": 10, "warmup_teacher_temp_epochs": 10}

TEACHER_HORIZON_FRACTION = 2500 / PAPER_ITERATIONS  # the paper's EMA horizon over its length
MOMENTUM_RANGE = (0.99, 0.9996)
PROTOTYPES_PER_VIEW = PAPER["out_dim"] // (2 * PAPER_BATCH)
PROTOTYPE_RANGE = (1024, 65536)
WARMUP_FRACTION = 0.1


def teacher_momentum(total_iterations: int) -> float:
    """EMA momentum whose horizon ``1 / (1 - m)`` is 0.26% of the run, within 0.99-0.9996.

    Example:
        >>> teacher_momentum(960_000), teacher_momentum(1_500)
        (0.9996, 0.99)
    """
    horizon = TEACHER_HORIZON_FRACTION * max(total_iterations, 1)
    m = 1.0 - 1.0 / max(horizon, 1.0)
    return round(min(max(m, MOMENTUM_RANGE[0]), MOMENTUM_RANGE[1]), 6)


def base_learning_rate(batch: int) -> float:
    """The ``lr`` setting (per 256 samples, scaled linearly by the trainer) for a total batch.

    At the paper's batch and above it is the paper's; below, the effective rate
    ``lr * batch / 256`` follows the square-root rule from the paper's.

    Example:
        >>> round(base_learning_rate(4) * 4 / 256 / (PAPER["lr"] * 64 / 256), 3)  # effective, vs paper
        0.25
    """
    if batch >= PAPER_BATCH:
        return PAPER["lr"]
    return PAPER["lr"] * math.sqrt(PAPER_BATCH / batch)


def prototypes(batch: int) -> int:
    """``K``: 512 prototypes per teacher view a step (two views per sample), a power of two.

    Example:
        >>> prototypes(64), prototypes(4), prototypes(1)
        (65536, 4096, 1024)
    """
    k = PROTOTYPES_PER_VIEW * 2 * batch
    k = 2 ** round(math.log2(k))
    return int(min(max(k, PROTOTYPE_RANGE[0]), PROTOTYPE_RANGE[1]))


def teacher_temperature(batch: int) -> float:
    """Final teacher temperature: 0.04 plus 0.03 times the batch's fraction of the paper's.

    Example:
        >>> teacher_temperature(64), teacher_temperature(4)
        (0.07, 0.0419)
    """
    fraction = min(batch / PAPER_BATCH, 1.0)
    return round(PAPER["warmup_teacher_temp"] + (PAPER["teacher_temp"] - PAPER["warmup_teacher_temp"]) * fraction, 4)


def warmups(num_epochs: int) -> int:
    """Warm-up epochs: 10% of the run, at least one when the run has more than one epoch.

    Example:
        >>> warmups(100), warmups(15), warmups(1)
        (10, 2, 0)
    """
    if num_epochs <= 1:
        return 0
    return max(1, round(WARMUP_FRACTION * num_epochs))


def adaptive_values(batch: int, num_epochs: int, iterations_per_epoch: int) -> dict[str, Any]:
    """The adaptive recipe's values for a run of ``num_epochs x iterations_per_epoch`` steps of ``batch``."""
    w = warmups(num_epochs)
    return {"momentum_teacher": teacher_momentum(num_epochs * iterations_per_epoch),
            "lr": base_learning_rate(batch), "out_dim": prototypes(batch),
            "teacher_temp": teacher_temperature(batch), "warmup_teacher_temp": PAPER["warmup_teacher_temp"],
            "warmup_epochs": w, "warmup_teacher_temp_epochs": w}


def resolve(values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``values`` (the plans' ``ssl`` block) completed with the recipe's values for names it leaves out.

    Explicit values always win. ``defaults`` gives the batch and length when ``values`` does not
    (the settings' own defaults: the paper's run).
    """
    values = dict(values)
    recipe = values.get("recipe", "adaptive")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {list(RECIPES)}, got {recipe!r}")
    if defaults is None:
        from nnunet_ssl.desd.settings import DeSDSettings

        defaults = DeSDSettings.field_defaults()
    d = dict(defaults)
    run = {k: int(values.get(k, d[k])) for k in ("batch_size", "num_epochs", "num_iterations_per_epoch")}
    derived = PAPER if recipe == "paper" else adaptive_values(run["batch_size"], run["num_epochs"],
                                                               run["num_iterations_per_epoch"])
    return {**derived, **values}
