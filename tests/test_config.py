"""sbi_inn.config: the data settings both methods share, the cINN's settings, and their dict forms."""

import pytest

from sbi_inn import DataConfig, FitConfig, INNConfig, TrainConfig
from sbi_inn.config import as_config, override


def test_data_config_defaults_validation_and_round_trip():
    cfg = DataConfig()
    assert (cfg.chunk_size, cfg.pilot_size, cfg.validation_fraction, cfg.fresh_simulations) == (10_000, 64, 0.1,
                                                                                                 False)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert DataConfig.from_dict({"validation_fraction": 0.0}).validation_fraction == 0.0
    for kwargs, match in (({"chunk_size": 0}, "chunk_size"), ({"validation_fraction": 1.0}, "validation_fraction"),
                          ({"max_invalid_fraction": 1.5}, "max_invalid_fraction")):
        with pytest.raises(ValueError, match=match):
            DataConfig(**kwargs)
    for kwargs, match in (({"pilot_size": 2.5}, "pilot_size must be an integer"),
                          ({"max_memory_bytes": True}, "max_memory_bytes must be an integer"),
                          ({"chunk_size": "10"}, "chunk_size must be an integer, got '10'"),
                          ({"validation_fraction": "0.1"}, "validation_fraction must be a number")):
        with pytest.raises(TypeError, match=match):
            DataConfig(**kwargs)
    with pytest.raises(TypeError, match="fresh_simulations"):
        DataConfig(fresh_simulations=1)
    with pytest.raises(TypeError, match=r"DataConfig: unknown key\(s\) \['chunksize'\]"):
        DataConfig.from_dict({"chunksize": 10})


def test_as_config_and_override():
    assert as_config(None, DataConfig, "data_config") == DataConfig()
    given = DataConfig(chunk_size=5)
    assert as_config(given, DataConfig, "data_config") is given
    assert as_config({"chunk_size": 5}, DataConfig, "data_config") == given
    with pytest.raises(TypeError, match="data_config must be a DataConfig or a dict, got list"):
        as_config([1], DataConfig, "data_config")
    assert override(TrainConfig(), {"lr": 0.5}, "t").lr == 0.5
    with pytest.raises(TypeError, match=r"t: unknown key\(s\) \['learning_rate'\]"):
        override(TrainConfig(), {"learning_rate": 0.5}, "t")
    with pytest.raises(TypeError, match="must be a dict or TrainConfig"):
        override(TrainConfig(), [("lr", 0.5)], "t")


def test_method_configs_name_wrong_keys_at_every_level():
    with pytest.raises(TypeError, match=r"FitConfig: unknown key\(s\) \['chunk_size'\]"):
        FitConfig.from_dict({"chunk_size": 100})  # a data setting: it lives in DataConfig now
    with pytest.raises(TypeError, match=r"INNConfig: unknown key\(s\) \['wy'\]"):
        INNConfig.from_dict({"wy": 1.0})
    with pytest.raises(TypeError, match="INNConfig.flow: unknown key"):
        INNConfig(flow={"blocks": 3})
    with pytest.raises(TypeError, match="INNConfig.train: unknown key"):
        INNConfig(train={"epoch": 3})
    inn = INNConfig(train={"epochs": 3})  # a partial dict overrides the INN's own defaults
    assert inn.train.epochs == 3 and inn.train.batch_size == INNConfig().train.batch_size == 500
    assert INNConfig.from_dict(inn.to_dict()) == inn


@pytest.mark.parametrize("build, message", [
    (lambda: FitConfig.from_dict({"flow": {"num_blocks": "4"}}), "FlowConfig: num_blocks must be an integer, got '4'"),
    (lambda: FitConfig.from_dict({"train": {"lr": "fast"}}), "TrainConfig: lr must be a number, got 'fast'"),
    (lambda: FitConfig.from_dict({"flow": {"hidden": 2.5}}), "FlowConfig: hidden must be an integer, got 2.5"),
    (lambda: FitConfig.from_dict({"flow": {"dropout": None}}), "FlowConfig: dropout must be a number, got None"),
    (lambda: FitConfig.from_dict({"summary_dim": "a"}), "FitConfig: summary_dim must be an integer or null"),
    (lambda: FitConfig.from_dict({"summary_activation": 3}), "FitConfig: summary_activation must be a string"),
    (lambda: INNConfig.from_dict({"w_y": [1]}), r"INNConfig: w_y must be a number, got \[1\]"),
    (lambda: INNConfig.from_dict({"deterministic": "yes"}), "INNConfig: deterministic must be true or false"),
    (lambda: TrainConfig(max_time="1h"), "TrainConfig: max_time must be a number or null"),
])
def test_a_json_value_of_the_wrong_type_is_named_when_the_config_is_built(build, message):
    """Values from JSON files and --config options: the field is named at once, not a bare comparison error later."""
    with pytest.raises(TypeError, match=message):
        build()


def test_the_cinn_trains_with_the_plateau_schedule_from_2000_simulations_and_decays_over_150_epochs_below():
    cfg = FitConfig()
    large, small = cfg.train_for(10_000), cfg.train_for(1_000)
    assert (large.lr_schedule, large.lr, large.lr_patience, large.lr_factor, large.epochs, large.patience) == (
        "plateau", 1e-3, 10, 0.5, 400, 20)
    assert (small.lr_schedule, small.lr, small.epochs, small.patience) == ("exponential", 2e-3, 150, 10)
    # a dict overrides single fields of the rule that applies, the schedule included
    assert FitConfig(train={"epochs": 50}).train_for(10_000).lr_schedule == "plateau"
    assert FitConfig(train={"lr_schedule": "exponential"}).train_for(10_000).epochs == 400
    with pytest.raises(TypeError, match="lr_patience must be an integer"):
        FitConfig(train={"lr_patience": 2.5})
