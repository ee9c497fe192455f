import json

import pytest

from dqnkit import Config, presets
from dqnkit.config import from_dict, parse_overrides
from dqnkit.errors import ConfigError


def test_defaults_and_every_preset_are_valid():
    Config()
    for name in presets.names():
        cfg = presets.get(name)
        assert cfg.preset == name
        assert from_dict(json.loads(cfg.to_json())) == cfg  # JSON round trip


def test_zoo_preset_is_exactly_rl_zoo():
    c = presets.get("cartpole-zoo")
    assert (c.lr, c.batch_size, c.buffer_size, c.learning_starts, c.gamma) == (2.3e-3, 64, 100_000, 1000, 0.99)
    assert (c.target_update_interval, c.train_freq, c.gradient_steps) == (10, 256, 128)
    assert (c.exploration_fraction, c.eps_end, c.hidden_sizes, c.total_steps) == (0.16, 0.04, (256, 256), 50_000)
    assert c.exploration_duration == 8000


def test_lesson_preset_matches_the_lesson():
    c = presets.get("cartpole-lesson")
    assert c.hidden_sizes == (128,) and c.lr == 1e-3 and c.loss == "mse" and c.max_grad_norm == 1.0
    assert c.eps_schedule == "exponential" and c.eps_decay == 0.995 and c.target_update_interval == 1000


def test_overrides_parse_strings_like_the_cli():
    cfg = presets.get(
        "cartpole",
        **parse_overrides(
            ["gamma=0.9", "double=false", "hidden_sizes=[32, 16]", "total_steps=2e4", "stop_at_return=none"]
        ),
    )
    assert cfg.gamma == 0.9 and cfg.double is False and cfg.hidden_sizes == (32, 16)
    assert cfg.total_steps == 20_000 and cfg.stop_at_return is None
    assert Config().replace(seed="7").seed == 7


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.01}, "gamma"),
        ({"total_steps": -1}, "total_steps"),
        ({"batch_size": 512, "buffer_size": 100}, "larger than buffer_size"),
        ({"learning_starts": 50_000, "total_steps": 50_000}, "nothing would be learned"),
        ({"loss": "l1"}, "huber, mse"),
        ({"tau": 1.5}, "tau"),
        ({"hidden_sizes": "0,4"}, "hidden_sizes"),
        ({"eps_start": 0.1, "eps_end": 0.5}, "eps_end"),
        ({"lr": "fast"}, "lr"),
        ({"double": "maybe"}, "double"),
        ({"seed": 1.5}, "seed"),
        ({"batch_size": "big"}, r"batch_size: cannot use 'big' \(expected an integer\)"),
        ({"hidden_sizes": "64,wide"}, r"hidden_sizes: cannot use '64,wide' \(expected an integer\)"),
        ({"lr": "abc"}, r"lr: cannot use 'abc' \(expected a number\)"),
        ({"nope": 1}, "unknown config key"),
    ],
)
def test_bad_values_are_refused_with_a_message(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config().replace(**overrides)


def test_wrong_type_given_directly_is_refused():
    with pytest.raises(ConfigError, match="wrong type"):
        Config(gamma="0.9")


def test_unknown_set_key_and_malformed_pair():
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        parse_overrides(["lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        presets.get("cartpool")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().seed = 3  # type: ignore[misc]


def test_docs_config_table_is_current():
    from pathlib import Path

    from dqnkit.config import markdown_table

    doc = Path(__file__).parent.parent / "docs" / "config.md"
    assert doc.read_text() == markdown_table(), "regenerate with: python -m dqnkit.config > docs/config.md"
