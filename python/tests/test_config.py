"""The configuration by name: every field through Engine(**overrides), refusals as ValueError
with the library's message."""
import math

import pytest

import sona

H = 16


def test_library_is_reported():
    assert sona.library_path
    assert sona.library_found_in
    assert sona.library_version.count(".") == 2


def test_every_field_is_listed():
    fields = dict(sona.config_fields())
    assert len(fields) == 40
    assert fields["hidden"] == "int"
    assert fields["micro_learning_rate"] == "float"
    assert fields["state_path"] == "string"
    cfg = sona.default_config(H)
    assert set(cfg) == set(fields)
    assert cfg["hidden"] == H and cfg["micro_rank"] == 4 and cfg["step_storage"] == 2
    assert math.isclose(cfg["micro_learning_rate"], 0.25, rel_tol=1e-6)
    assert sona.default_config(H, "edge")["background_thread"] == 0


# Every field but hidden with a valid value other than the default: the engine must hold it.
VALUES = dict(seed=2**53, micro_rank=3, base_rank=5, base_layers=3, max_tenants=9,
              micro_apply_every=2, max_steps=7, buffer_capacity=33, background_thread=False,
              loop_b_threshold=17, loop_b_interval_ms=1234, loop_b_min_batch=3,
              clusters_per_cycle=5, max_patterns=77, ewc_enabled=True, max_tasks=4,
              dreams_per_cycle=6, dream_length=11, loop_c_interval_ms=0, device_apply=0,
              device_min_rows=40, step_storage=1, micro_alpha=5.5, micro_learning_rate=0.15,
              base_alpha=9.25, base_learning_rate=0.05, max_signal_weight=2.5,
              baseline_decay=0.9, ewc_lambda=0.02, fisher_decay=0.98, task_shift_threshold=1.5,
              dream_temperature=0.75, dream_jump_prob=0.2, dream_novelty_bonus=0.25,
              dream_replay_min_score=0.4, merge_cosine=0.97, importance_decay=0.9,
              max_output_change=4.0)


def test_every_field_round_trips(tmp_path):
    assert set(VALUES) | {"hidden", "state_path"} == {n for n, _ in sona.config_fields()}
    path = str(tmp_path / "ck.state")
    with sona.Engine(H, state_path=path, **VALUES) as e:
        cfg = e.config
    assert cfg["state_path"] == path
    assert cfg["hidden"] == H
    for name, value in VALUES.items():
        assert cfg[name] == pytest.approx(float(value), rel=1e-6), name


def test_presets_by_name_and_number():
    with sona.Engine(H, "edge") as e:
        assert e.config["base_layers"] == 4
    with sona.Engine(H, 2, background_thread=0) as e:
        assert e.config["base_rank"] == 16
    with pytest.raises(ValueError, match="preset"):
        sona.Engine(H, "fastest")


def test_unknown_name_raises_value_error_with_the_librarys_message():
    with pytest.raises(ValueError, match="no_such_field") as info:
        sona.Engine(H, no_such_field=1)
    assert isinstance(info.value, sona.NotFoundError)
    assert info.value.status == sona.STATUS["SONA_E_NOT_FOUND"]
    assert "sona_engine_config_set" in str(info.value)


@pytest.mark.parametrize("name,value,cls", [
    ("micro_rank", -1, sona.InvalidArgumentError),
    ("max_steps", 2.5, sona.InvalidArgumentError),
    ("max_patterns", 2**32, sona.InvalidArgumentError),
    ("step_storage", 3, sona.InvalidArgumentError),
    ("background_thread", 2**31, sona.InvalidArgumentError),
    ("seed", -1, sona.InvalidArgumentError),
    ("seed", 2**64, sona.InvalidArgumentError),
    ("seed", 2**53 + 1, sona.InvalidArgumentError),  # no exact double
    ("base_learning_rate", float("nan"), sona.NonFiniteError),
    ("max_tenants", float("inf"), sona.NonFiniteError),
    ("ewc_lambda", 1e40, sona.InvalidArgumentError),
    ("micro_alpha", "fast", sona.InvalidArgumentError),  # a string for a number
    ("state_path", 1, sona.InvalidArgumentError),
    ("state_path", "p" * 300, sona.InvalidArgumentError),
    ("micro_rank", [1], sona.InvalidArgumentError),
])
def test_bad_values_raise_value_error(name, value, cls):
    with pytest.raises(ValueError) as info:
        sona.Engine(H, **{"background_thread": 0, name: value})
    assert type(info.value) is cls
    assert name in str(info.value)


def test_a_combination_the_engine_refuses():
    # Each value fits its type; sona_engine_create judges them together.
    with pytest.raises(sona.InvalidArgumentError, match="rank"):
        sona.Engine(H, micro_rank=65)
    with pytest.raises(ValueError):
        sona.Engine(0)
