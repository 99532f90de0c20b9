"""--time-budget: the duration parser, the plan, the timing probe leaving no trace, and fit
following (and, on resume, replaying) the plan. Tiny models; the timings that decide the plan
are replaced where a test needs a given plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fit_fixtures import column, fit_args, invoke, make_colour_data, model_weights, read_history

from retrain import budget
from retrain.config import FitConfig, parse_duration
from retrain.errors import ConfigError

FLAGS = dict(epochs=2, fine_tune_epochs=3, batch_size=4, freeze="block1_out", schedule="cosine")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("600", 600),
                                           (" 2M ", 120), ("0.5", 0.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "ten minutes", "0", "-5m", "inf", "10x", "nan"])
def test_parse_duration_refuses(text):
    with pytest.raises(ConfigError, match="--time-budget must be a duration"):
        parse_duration(text)


def test_config_refuses_a_budget_for_several_workers():
    with pytest.raises(ConfigError, match="cannot plan for several workers"):
        FitConfig(time_budget="10m", distribute="multi-worker")
    assert FitConfig(time_budget="10m", distribute="mirrored").time_budget == "10m"


def test_plan_epochs():
    cost = budget.Cost(step=0.1, validation=1.0, save=0.5, steps=10)
    assert cost.epoch == pytest.approx(3.0)
    assert budget.plan_epochs(10.0, cost, at_most=14) == 3  # (10 - 0.5) // 3
    assert budget.plan_epochs(10.0, cost, at_most=2) == 2
    assert budget.plan_epochs(3.4, cost, at_most=14) == 0
    assert budget.plan_epochs(-5.0, cost, at_most=14) == 0


def test_measure_puts_every_variable_back():
    """Weights, BatchNormalization statistics and Dropout's random state are as before the
    timed steps, which really trained (the optimizer stepped)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(20) % 3]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    before = [v.numpy().copy() for v in model.variables]
    assert any("seed_generator_state" in v.path for v in model.variables)
    optimizer = keras.optimizers.Adam(0.1)
    cost = budget.measure(model, model, optimizer, "categorical_crossentropy", ds, ds, steps=4, val_rows=20)
    assert int(optimizer.iterations.numpy()) == budget.WARMUP_STEPS + budget.TIMED_STEPS
    for v, value in zip(model.variables, before):
        np.testing.assert_array_equal(v.numpy(), value, err_msg=v.path)
    assert cost.step > 0 and cost.validation > 0 and cost.save > 0 and cost.steps == 4
    assert cost.epoch == pytest.approx(4 * cost.step + cost.validation + 2 * cost.save)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_colour_data(tmp_path_factory.mktemp("budget") / "data", train=4, validation=3)


def _fit(colours, runs, name, **flags):
    result = invoke(fit_args(colours, runs, name, **{**FLAGS, **flags}))
    assert result.exit_code == 0, (result.output, result.exception)
    return runs / name, result


def _facts(run):
    return json.loads((run / "run.json").read_text())


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_an_ample_budget_changes_nothing(colours, tmp_path, cache):
    """A budget every epoch fits in plans all of them, and the timed steps leave no trace:
    the history and weights equal those of a run without a budget (phase 2 on cached
    activations, and on images through the whole model)."""
    results = {}
    for name, extra in (("plain", []), ("budget", ["--time-budget", "1h"])):
        results[name] = invoke(fit_args(colours, tmp_path, name, **FLAGS) + [cache] + extra)
        assert results[name].exit_code == 0, (results[name].output, results[name].exception)
    plain, run = tmp_path / "plain", tmp_path / "budget"
    assert "--time-budget 1h:" in results["budget"].stderr
    assert "3 of 3 fine-tuning epochs" in results["budget"].stderr
    assert _facts(run)["fine_tune_epochs_planned"] == 3
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_array_equal(column(run, key), column(plain, key), err_msg=key)
    for a, b in zip(model_weights(run / "model.keras"), model_weights(plain / "model.keras")):
        np.testing.assert_array_equal(a, b)


def _fixed_cost(monkeypatch, epoch_seconds: float) -> None:
    """Make the probe report epochs of `epoch_seconds` (still running it, for its side effects)."""
    real = budget.measure

    def measure(*args, **kwargs):
        cost = real(*args, **kwargs)
        return budget.Cost(step=0.0, validation=epoch_seconds, save=0.0, steps=cost.steps)

    monkeypatch.setattr(budget, "measure", measure)


def test_the_plan_sets_the_epochs_and_the_schedule(colours, tmp_path, monkeypatch):
    """Epochs of 'an hour' in a 2.5 h budget: 2 of 3 fine-tuning epochs, and the cosine
    schedule decays over those 2: the run equals one made with --fine-tune-epochs 2 (a
    schedule over 3 epochs would give other losses)."""
    _fixed_cost(monkeypatch, 3600.0)
    run, result = _fit(colours, tmp_path, "planned", time_budget="2.5h")
    assert "2 of 3 fine-tuning epochs" in result.stderr
    assert _facts(run)["fine_tune_epochs_planned"] == 2
    assert "2 of 3 fine-tuning epochs" in _facts(run)["time_budget_plan"]
    assert column(run, "epoch").tolist() == [0, 1, 2, 3]
    two, _ = _fit(colours, tmp_path, "two", fine_tune_epochs=2)
    for key in ("loss", "val_loss"):
        np.testing.assert_array_equal(column(run, key), column(two, key), err_msg=key)


def test_a_spent_budget_skips_fine_tuning(colours, tmp_path):
    run, result = _fit(colours, tmp_path, "spent", time_budget="0.001s")
    line = next(line for line in result.stderr.splitlines() if "--time-budget" in line)
    assert line.startswith("phase 2: skipped: --time-budget 0.001s has 0 s left"), line
    assert "the model is phase 1's" in line
    assert _facts(run)["fine_tune_epochs_planned"] == 0
    assert len(read_history(run)) == 2
    assert (run / "model.keras").is_file()


def test_no_fine_tuning_nothing_to_plan(colours, tmp_path):
    run, result = _fit(colours, tmp_path, "frozen", freeze="all", time_budget="10m")
    assert "no fine-tuning follows, nothing to plan; phase 1's 2 epochs run as given" in result.stderr
    assert "fine_tune_epochs_planned" not in _facts(run)


class Interrupted(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("hook", ["on_epoch_begin", "on_epoch_end"],
                         ids=["after the plan, before phase 2's first epoch", "after phase 2's first epoch"])
def test_resume_replays_the_plan(colours, tmp_path, monkeypatch, hook):
    """Planned 2 of 3 epochs, interrupted (Ctrl-C) at the start or the end (checkpoint saved)
    of phase 2's first epoch, then resumed where the probe would now plan all 3: the resume
    keeps the recorded 2 and ends with the uninterrupted run's history and weights."""
    from retrain.callbacks import CheckpointSaver

    _fixed_cost(monkeypatch, 3600.0)
    ref, _ = _fit(colours, tmp_path, "ref", time_budget="2.5h")
    saved = getattr(CheckpointSaver, hook)

    def stop(self, epoch, logs=None):
        saved(self, epoch, logs)
        if epoch == FLAGS["epochs"]:  # phase 2's first epoch
            raise Interrupted

    monkeypatch.setattr(CheckpointSaver, hook, stop)
    result = invoke(fit_args(colours, tmp_path, "cut", **FLAGS, time_budget="2.5h"))
    assert result.exit_code == 130, (result.output, result.exception)
    monkeypatch.setattr(CheckpointSaver, hook, saved)
    _fixed_cost(monkeypatch, 1.0)
    run = tmp_path / "cut"
    result = invoke(["fit", "--resume", str(run)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "phase 2: 2 fine-tuning epochs, as --time-budget planned" in result.stderr
    assert column(run, "epoch").tolist() == [0, 1, 2, 3]
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(column(run, key), column(ref, key), rtol=0, atol=1e-6, err_msg=key)
    for a, b in zip(model_weights(run / "model.keras"), model_weights(ref / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_bad_budget_is_one_line(colours, tmp_path):
    from fit_fixtures import assert_one_error_line

    result = invoke(fit_args(colours, tmp_path, "bad", **FLAGS, time_budget="ten minutes"))
    assert_one_error_line(result, 2, "--time-budget must be a duration", "received: ten minutes", "10m")
    assert not (tmp_path / "bad").exists()
