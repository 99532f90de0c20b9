"""PrepareConfig and FitConfig refuse values that cannot work and round-trip through JSON."""

from __future__ import annotations

import pytest

from retrain.config import (FitConfig, PrepareConfig, QuickDrawConfig, parse_class_names, parse_list,
                            unsafe_folder_names)
from retrain.errors import ConfigError


@pytest.mark.parametrize("values, flag", [
    ({"dataset": "mnist"}, "--dataset"),
    ({"label_mode": "medium"}, "--label-mode"),
    ({"image_format": "gif"}, "--image-format"),
    ({"label_mode": "coarse"}, "--label-mode"),  # cifar10 has no coarse labels
    ({"validation_size": -1}, "--validation-size"),
    ({"validation_size": 2.5}, "--validation-size"),
    ({"md5": "xyz"}, "--md5"),
    ({"md5": "g" * 32}, "--md5"),
    ({"md5": "0" * 31}, "--md5"),
])
def test_prepare_config_rejects_bad_values(values, flag):
    """Each bad PrepareConfig value raises ConfigError naming the flag and the value."""
    with pytest.raises(ConfigError) as caught:
        PrepareConfig(**values)
    assert flag in str(caught.value)
    assert str(next(iter(values.values()))) in str(caught.value)


def test_prepare_config_accepts_good_values():
    """Valid settings build, upper-case md5 included; coarse maps to its own folder."""
    config = PrepareConfig(dataset="cifar100", label_mode="coarse", md5="C58F30108F718F92721AF3B95E74349A",
                           validation_size=0, image_format="jpg")
    assert config.output_name == "cifar100_coarse"
    assert PrepareConfig(dataset="cifar100").output_name == "cifar100"


@pytest.mark.parametrize("values, flag", [
    ({"epochs": -1}, "--epochs"),
    ({"fine_tune_epochs": 1.5}, "--fine-tune-epochs"),
    ({"epochs": 0, "fine_tune_epochs": 0}, "--epochs"),
    ({"batch_size": 0}, "--batch-size"),
    ({"batch_size": True}, "--batch-size"),
    ({"learning_rate": -1e-3}, "--learning-rate"),
    ({"fine_tune_learning_rate": 0}, "--fine-tune-learning-rate"),
    ({"keep_checkpoints": 0}, "--keep-checkpoints"),
    ({"alpha": 0}, "--alpha"),
    ({"save_every_steps": -5}, "--save-every-steps"),
    ({"image_size": 0}, "--image-size"),
    ({"dropout_rate": 1.0}, "--dropout-rate"),
    ({"label_smoothing": -0.1}, "--label-smoothing"),
    ({"feature_shift": -1}, "--feature-shift"),
    ({"feature_shift": 0.5}, "--feature-shift"),
    ({"validation_split": 0}, "--validation-split"),
    ({"validation_split": 1}, "--validation-split"),
    ({"class_weight": "balanced"}, "--class-weight"),
    ({"augment": ("flip", "teleport")}, "--augment"),
    ({"freeze": "-3"}, "--freeze"),
    ({"name": "runs/a"}, "--name"),
    ({"name": ".hidden"}, "--name"),
    ({"name": ""}, "--name"),
])
def test_fit_config_rejects_bad_values(values, flag):
    """Each bad FitConfig value raises ConfigError naming the flag."""
    with pytest.raises(ConfigError, match=flag):
        FitConfig(**values)


def test_head_learning_rate_goes_as_one_over_sqrt_steps():
    """1e-3 at 7,030 steps (all of CIFAR-10, 10 epochs) and beyond; x2 for a quarter of the
    steps; capped at 1e-2 for 70 steps or fewer; the default config leaves it to this rule."""
    from retrain.config import head_learning_rate

    assert head_learning_rate(7030) == pytest.approx(1e-3)
    assert head_learning_rate(100_000) == pytest.approx(1e-3)
    assert head_learning_rate(7030 // 4) == pytest.approx(2e-3, rel=1e-3)
    assert head_learning_rate(145) == pytest.approx(6.963e-3, rel=1e-3)  # the peer's 5 x 29 steps
    assert head_learning_rate(70) == head_learning_rate(1) == head_learning_rate(0) == pytest.approx(1e-2)
    assert FitConfig().learning_rate is None
    assert FitConfig.from_json(FitConfig().to_json()).learning_rate is None


def test_fit_config_normalises_freeze_words():
    """--freeze ALL means all; a layer name keeps its case."""
    assert FitConfig(freeze="ALL").freeze == "all"
    assert FitConfig(freeze="Conv_1").freeze == "Conv_1"


def test_prepare_config_json_round_trip():
    """to_json/from_json gives back an equal PrepareConfig."""
    config = PrepareConfig(dataset="cifar100", label_mode="coarse", root="/d", source="http://m/x.tar.gz",
                           md5="0" * 32, validation_size=7, image_format="jpg", seed=9, force=True,
                           workers=3)
    assert PrepareConfig.from_json(config.to_json()) == config
    assert PrepareConfig.from_json(PrepareConfig().to_json()) == PrepareConfig()


def test_fit_config_json_round_trip():
    """to_json/from_json gives back an equal FitConfig, tuples included."""
    config = FitConfig(data="d/x", backbone="resnet50", alpha=0.5, weights="w.weights.h5",
                       image_size=96, freeze="12", augment=("flip", "crop"), epochs=2,
                       fine_tune_epochs=0, batch_size=8, learning_rate=0.01,
                       fine_tune_learning_rate=0.001, dropout_rate=0.1, label_smoothing=0.1,
                       validation_split=0.3, class_weight="none", seed=4, runs_dir="runs",
                       name="trial", keep_checkpoints=1, save_every_steps=10, init_from="runs/old",
                       deterministic=False)
    again = FitConfig.from_json(config.to_json())
    assert again == config
    assert again.augment == ("flip", "crop")


def test_from_json_rejects_unknown_settings():
    """A saved config with a setting this version does not know is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="colour"):
        PrepareConfig.from_dict({"dataset": "cifar10", "colour": "red"})


def test_from_json_validates_values():
    """Loading JSON runs the same checks as building from flags."""
    with pytest.raises(ConfigError, match="--epochs"):
        FitConfig.from_json('{"epochs": -2}')


def test_parse_list():
    """'flip, Crop' -> ('flip', 'crop'); empty -> ()."""
    assert parse_list("flip, Crop,") == ("flip", "crop")
    assert parse_list("") == () and parse_list(None) == ()


@pytest.mark.parametrize("values, flag", [
    ({"classes": ()}, "no classes"),
    ({"classes": "apple"}, "--classes"),
    ({"classes": ("apple", "apple")}, "more than once"),
    ({"classes": ("apple", "a/b")}, "folder names"),
    ({"classes": ("..",)}, "folder names"),
    ({"classes": (".hidden",)}, "folder names"),
    ({"classes": (" apple",)}, "folder names"),
    ({"max_per_class": -1}, "--max-per-class"),
    ({"max_per_class": 2.5}, "--max-per-class"),
    ({"seed": -1}, "--seed"),
    ({"workers": -2}, "--workers"),
    ({"validation_split": 1.0}, "--validation-split"),
    ({"test_split": -0.1}, "--test-split"),
    ({"validation_split": 0.6, "test_split": 0.4}, "--test-split"),
    ({"source": " "}, "--source"),
])
def test_quickdraw_config_rejects_bad_values(values, flag):
    """Each bad QuickDrawConfig value raises ConfigError saying what is wrong."""
    values = {"classes": ("apple",), **values}
    with pytest.raises(ConfigError, match=flag):
        QuickDrawConfig(**values)


def test_quickdraw_config_sorts_classes_and_round_trips():
    """Classes are kept sorted (the label order); to_json/from_json gives back an equal config."""
    config = QuickDrawConfig(classes=("cat", "The Eiffel Tower", "apple"), max_per_class=0,
                             root="/d", source="http://m/numpy_bitmap", validation_split=0.2,
                             test_split=0, seed=3, force=True, workers=2)
    assert config.classes == ("The Eiffel Tower", "apple", "cat")
    assert QuickDrawConfig.from_json(config.to_json()) == config


def test_parse_class_names():
    """Commas or lines; case and inner spaces kept; blank lines and # comments dropped."""
    assert parse_class_names("apple, The Eiffel Tower,,") == ("apple", "The Eiffel Tower")
    assert parse_class_names("# c\napple  # fruit\n\n The Mona Lisa\n", one_per_line=True) == (
        "apple", "The Mona Lisa")
    assert parse_class_names(None) == ()


def test_unsafe_folder_names():
    assert unsafe_folder_names(["ok name", "", ".", "..", ".x", "a/b", "a\\b", "a\0"]) == [
        "", ".", "..", ".x", "a/b", "a\\b", "a\0"]
