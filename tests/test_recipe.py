"""The adaptive SSL recipe: the paper's values at the paper's run, the rules elsewhere, explicit values win."""
import math

import pytest

from nnunet_ssl.desd import recipe
from nnunet_ssl.desd.monitor import collapse_advice
from nnunet_ssl.desd.settings import DeSDSettings

SHORT_RUN = {"batch_size": 4, "num_epochs": 30, "num_iterations_per_epoch": 50}


def test_the_paper_run_gets_the_paper_values():
    adaptive = DeSDSettings.from_dict({}).to_dict()
    for name, value in recipe.PAPER.items():
        assert adaptive[name] == pytest.approx(value), name
    assert DeSDSettings.from_dict({}) == DeSDSettings()


def test_teacher_horizon_is_a_fixed_fraction_of_the_run():
    # 96,000 iterations: horizon 0.26% = 250 iterations, DINO's 0.996
    assert recipe.teacher_momentum(96_000) == pytest.approx(0.996)
    assert recipe.teacher_momentum(960_000) == pytest.approx(0.9996)
    assert recipe.teacher_momentum(100) == 0.99  # floor
    assert recipe.teacher_momentum(10**9) == 0.9996  # ceiling
    values = [recipe.teacher_momentum(n) for n in (10, 10**3, 10**4, 10**5, 10**6, 10**7)]
    assert values == sorted(values)


def test_learning_rate_follows_the_square_root_rule_below_the_paper_batch():
    def effective(b):
        return recipe.base_learning_rate(b) * b / 256

    paper = recipe.PAPER["lr"] * 64 / 256
    assert effective(64) == pytest.approx(paper)
    assert effective(16) == pytest.approx(paper * 0.5)
    assert effective(4) == pytest.approx(paper * 0.25)
    assert effective(256) == pytest.approx(recipe.PAPER["lr"])  # linear above (DINO)


def test_prototypes_per_view_and_temperature():
    assert [recipe.prototypes(b) for b in (1, 2, 4, 8, 64, 512)] == [1024, 2048, 4096, 8192, 65536, 65536]
    assert recipe.teacher_temperature(64) == 0.07
    assert recipe.teacher_temperature(128) == 0.07
    assert recipe.teacher_temperature(32) == pytest.approx(0.055)
    assert recipe.warmups(30) == 3 and recipe.warmups(2) == 1


def test_short_run_values_and_explicit_values_win():
    s = DeSDSettings.from_dict(SHORT_RUN)
    assert (s.momentum_teacher, s.out_dim, s.warmup_epochs) == (0.99, 4096, 3)
    assert s.lr * 4 / 256 == pytest.approx(recipe.PAPER["lr"] * 64 / 256 * math.sqrt(4 / 64))
    pinned = DeSDSettings.from_dict({**SHORT_RUN, "out_dim": 512, "momentum_teacher": 0.995})
    assert (pinned.out_dim, pinned.momentum_teacher, pinned.warmup_epochs) == (512, 0.995, 3)
    paper = DeSDSettings.from_dict({**SHORT_RUN, "recipe": "paper"})
    assert (paper.out_dim, paper.momentum_teacher, paper.teacher_temp) == (65536, 0.9996, 0.07)
    assert DeSDSettings.from_dict(s.to_dict()) == s  # a checkpoint's settings read back unchanged


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="recipe must be one of"):
        DeSDSettings.from_dict({"recipe": "fast"})


def test_collapse_advice_names_what_to_change():
    paper = DeSDSettings.from_dict({**SHORT_RUN, "recipe": "paper"})
    advice = collapse_advice(paper, "teacher outputs are uniform (entropy 8.1 of log K = 8.3 nats)")
    assert "8 views per step against K = 65536" in advice and "out_dim to 4096" in advice
    assert "momentum_teacher to 0.99" in advice and "1500-iteration run" in advice
    one_hot = collapse_advice(DeSDSettings.from_dict({**SHORT_RUN, "teacher_temp": 0.02}),
                              "teacher outputs are one-hot (entropy 0.01 nats)")
    assert "raise teacher_temp" in one_hot and "out_dim" not in one_hot
    assert "follow the adaptive recipe" in collapse_advice(DeSDSettings.from_dict(SHORT_RUN), "uniform")
