"""Config loading: the example parses; every error names the file and the key."""

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"


def minimal(**over) -> dict:
    data = {
        "imap": {"listen_tls": ["127.0.0.1:993"], "cert_file": "c.pem", "key_file": "k.pem"},
        "auth": {"backend": "static", "users_file": "users.toml"},
        "vault": {"path": "vault.json", "key_file": "vault.key"},
        "audit": {"jsonl_path": "audit.jsonl"},
        "policy": {"file": "policy.toml"},
        "mailboxes": {"protocollo": {"address": "p@pec.example.it",
                                     "imap": {"host": "imap.example.it", "username": "p@pec.example.it"}}},
    }
    for dotted, value in over.items():
        *path, last = dotted.split("__")
        node = data
        for p in path:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def test_example_config_parses():
    cfg = load_config(EXAMPLE)
    assert cfg.mailboxes["protocollo"].imap.host == "imaps.pec.aruba.it"
    assert cfg.auth.trust_window_s == 43200 and cfg.imap.limits.max_literal == 104857600
    assert {listener.tls for listener in cfg.imap.listeners} == {"implicit", "starttls"}
    assert [(x.port, x.tls) for x in cfg.smtp.listeners] == [(465, "implicit"), (587, "starttls")]
    assert cfg.smtp.cert_file == cfg.imap.cert_file  # defaults to the IMAP certificate
    sub = cfg.mailboxes["protocollo"].smtp
    assert (sub.upstream.host, sub.upstream.port, sub.upstream.username) == (
        "smtps.pec.aruba.it", 465, "protocollo@pec.example.it")  # username: the IMAP one by default
    assert (sub.max_recipients, sub.max_total_bytes, sub.timeout_s) == (100, 100_000_000, 120.0)


def test_smtp_is_optional_and_checked(tmp_path):
    assert parse_config(minimal(), tmp_path / "gw.toml").smtp is None
    for override, key in (({"smtp": {"listen_tls": []}}, "smtp.listen_tls"),
                          ({"smtp": {"listen_tls": ["127.0.0.1:465"], "typo": 1}}, "smtp.typo"),
                          ({"mailboxes__protocollo__smtp": {"host": "h", "max_recipients": 0}},
                           "mailboxes.protocollo.smtp.max_recipients"),
                          ({"mailboxes__protocollo__smtp": {"host": "h", "tls": "none"}},
                           "mailboxes.protocollo.smtp.tls"),
                          ({"mailboxes__protocollo__smtp": {"port": 465}}, "mailboxes.protocollo.smtp.host")):
        with pytest.raises(ConfigError) as info:
            parse_config(minimal(**override), tmp_path / "gw.toml")
        assert info.value.key == key


def test_relative_paths_resolve_against_the_file(tmp_path):
    cfg = parse_config(minimal(), tmp_path / "gw.toml")
    assert cfg.vault.path == tmp_path / "vault.json" and cfg.imap.cert_file == tmp_path / "c.pem"
    assert cfg.policy_file == tmp_path / "policy.toml"


@pytest.mark.parametrize("override,key", [
    ({"imap__max_line_length": "big"}, "imap.max_line_length"),
    ({"imap__max_line_length": 10}, "imap.max_line_length"),
    ({"imap__listen_tls": ["nohost"]}, "imap.listen_tls"),
    ({"imap__cert_file": None}, "imap.cert_file"),
    ({"imap__typo_key": 1}, "imap.typo_key"),
    ({"auth__backend": "kerberos"}, "auth.backend"),
    ({"auth__users_file": None}, "auth.users_file"),
    ({"vault__path": None}, "vault.path"),
    ({"mailboxes__protocollo__offices": ["legale"]}, "mailboxes.protocollo.offices"),
    ({"offices__legale__groups": ["legale"]}, "offices"),
    ({"policy__file": None}, "policy.file"),
    ({"policy": None}, "policy"),
    ({"mailboxes__protocollo__imap__tls": "none"}, "mailboxes.protocollo.imap.tls"),
    ({"mailboxes__protocollo__imap__port": 0}, "mailboxes.protocollo.imap.port"),
    ({"mailboxes__protocollo__imap__username": None}, "mailboxes.protocollo.imap.username"),
])
def test_errors_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(**override), tmp_path / "gw.toml")
    assert info.value.key == key
    assert str(info.value).startswith(f"{tmp_path / 'gw.toml'}: {key}: ")


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[imap\nlisten_tls = 1\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_admin_channel_defaults_to_a_private_socket_beside_the_vault(tmp_path):
    cfg = parse_config(minimal(), tmp_path / "gw.toml").admin
    assert cfg.socket == tmp_path / "admin.sock" and cfg.socket_mode == 0o600
    assert (cfg.listen_host, cfg.listen_port) == (None, None)
    assert (cfg.revalidate_s, cfg.revocation_poll_s) == (60.0, 0.5)
    tcp = parse_config(minimal(admin={"socket": "", "listen": "127.0.0.1:9900", "socket_mode": "0660"}),
                       tmp_path / "gw.toml").admin
    assert (tcp.socket, tcp.listen_host, tcp.listen_port, tcp.socket_mode) == (None, "127.0.0.1", 9900, 0o660)
    assert parse_config(minimal(admin={"listen": "[::1]:9900"}), tmp_path / "gw.toml").admin.listen_host == "::1"


@pytest.mark.parametrize("admin, message", [
    ({"listen": "0.0.0.0:9900"}, "0.0.0.0 is not a loopback address"),
    ({"listen": "192.0.2.7:9900"}, "192.0.2.7 is not a loopback address"),
    ({"listen": "9900"}, "'9900' is not host:port"),
    ({"socket_mode": "0666"}, "must give nothing to others"),
    ({"socket_mode": "600"}, "is not an octal mode"),
    ({"socket": "/tmp/" + "x" * 120}, "too long for a unix socket"),
    ({"socket": ""}, "needs a socket or a listen address"),
    ({"revalidate_interval": 0}, "revalidate_interval"),
    ({"sockets": "/tmp/a"}, "sockets"),
])
def test_admin_channel_is_never_open_to_the_network(tmp_path, admin, message):
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(admin=admin), tmp_path / "gw.toml")
    assert info.value.key.startswith("admin.") and message in str(info.value)
