"""The lifecycle keys: ``log_format``, ``shutdown_grace``, ``[smtp] preauth_timeout``."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.unit.test_config import EXAMPLE, minimal


def test_defaults(tmp_path):
    cfg = parse_config(minimal(smtp={"listen_tls": ["127.0.0.1:465"]}), tmp_path / "gw.toml")
    assert (cfg.log_format, cfg.shutdown_grace_s, cfg.smtp.preauth_timeout_s) == ("text", 30.0, 60.0)


def test_the_example_sets_every_key_to_its_default():
    cfg = load_config(EXAMPLE)
    assert (cfg.log_format, cfg.shutdown_grace_s, cfg.smtp.preauth_timeout_s) == ("text", 30.0, 60.0)


def test_values_and_errors(tmp_path):
    cfg = parse_config(minimal(log_format="json", shutdown_grace=5,
                               smtp={"listen_tls": ["127.0.0.1:465"], "preauth_timeout": 20}), tmp_path / "gw.toml")
    assert (cfg.log_format, cfg.shutdown_grace_s, cfg.smtp.preauth_timeout_s) == ("json", 5.0, 20.0)
    for override, key in (({"log_format": "xml"}, "log_format"), ({"shutdown_grace": -1}, "shutdown_grace"),
                          ({"shutdown_grace": "30s"}, "shutdown_grace"),
                          ({"smtp": {"listen_tls": ["127.0.0.1:465"], "preauth_timeout": 0}}, "smtp.preauth_timeout")):
        with pytest.raises(ConfigError) as info:
            parse_config(minimal(**override), tmp_path / "gw.toml")
        assert info.value.key == key
