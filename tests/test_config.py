"""Settings: parsing rules, what a reload applies, and the files generated from the table."""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import pytest
from harness import ROOT

from sssrd.config import (
    FIELDS,
    FIELDS_BY_NAME,
    ConfigError,
    Settings,
    load_settings,
    merge_reload,
    parse_address,
    settings_from_toml,
    unknown_env,
)

sys.path.insert(0, str(ROOT))  # tools/ is not an installed package
from sssrd.cli import main
from sssrd.server import shift_port
from tools import settings_docs

# Below every source, so each one tested can override any of these.
LOCAL = {"callback_url": "http://10.0.0.1:1", "invoker": "local", "max_body_bytes": 1}


def test_generated_settings_files_are_current():
    """packaging/sssrd.toml and docs/settings.md are what `python tools/settings_docs.py` writes."""
    assert settings_docs.stale() == []


def test_shipped_config_uncommented_is_every_setting_at_its_default(tmp_path):
    shipped = (ROOT / "packaging" / "sssrd.toml").read_text()
    uncommented = tmp_path / "sssrd.toml"
    uncommented.write_text(re.sub(r"^# (\w+ = )", r"\1", shipped, flags=re.MULTILINE))
    keys = re.findall(r"^(\w+) = ", uncommented.read_text(), re.MULTILINE)
    assert keys == [field.name for field in FIELDS]
    # The defaults alone are not a runnable config (no function, a wildcard callback listener):
    # flags fill those in, and win over the file only for these two keys.
    needed = {"callback_url": "http://10.0.0.1:1", "function": "render"}
    from_file = load_settings(str(uncommented), environ={}, flags=needed)
    assert from_file == load_settings(environ={}, flags=needed)


def test_settings_reference_gives_every_setting_its_default_and_reload_column():
    reference = (ROOT / "docs" / "settings.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `[^`]*` \| (live|restart) \|", reference, re.MULTILINE))
    assert rows == {f.name: "live" if f.reloadable else "restart" for f in FIELDS}


def test_reload_applies_reloadable_settings_and_names_the_others():
    current = load_settings(environ={}, defaults=LOCAL)
    loaded = dataclasses.replace(
        current, max_pending=7, idle_timeout=1.5, listen=parse_address("127.0.0.1:1")
    )
    merged, applied, needs_restart = merge_reload(current, loaded)
    assert (applied, needs_restart) == (["max_pending", "idle_timeout"], ["listen"])
    assert (merged.max_pending, merged.idle_timeout, merged.listen) == (7, 1.5, current.listen)
    assert merge_reload(current, current) == (current, [], [])


def test_every_field_is_a_settings_attribute_with_its_own_field():
    assert [f.name for f in dataclasses.fields(Settings)] == list(FIELDS_BY_NAME)
    assert all(field.help and field.doc and field.section for field in FIELDS)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("[::1]:8080", "::1", 8080),
        ("localhost:1", "localhost", 1),
    ],
)
def test_addresses_parse(text, host, port):
    address = parse_address(text)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("text", ["8080", "host:80", "1.2.3.4:99999", "1.2.3.4:", ":80x"])
def test_bad_addresses_are_refused(text):
    with pytest.raises(ValueError):
        parse_address(text)


@pytest.mark.parametrize(
    ("flags", "limit"),
    [
        ({}, 1_048_576),
        ({"invocation_type": "requestresponse"}, 6_291_456),
        ({"invocation_type": "RequestResponse", "max_event_bytes": "2000000"}, 2_000_000),
    ],
)
def test_the_event_limit_follows_the_invocation_type_unless_set(flags, limit):
    needed = {"callback_url": "http://10.0.0.1:1", "function": "render"}
    settings = load_settings(environ={}, flags={**needed, **flags})
    assert settings.max_event_bytes == limit
    assert settings.invocation_type == flags.get("invocation_type", "Event").replace(
        "requestresponse", "RequestResponse"
    )


def test_request_response_with_the_boto3_client_is_refused_at_startup():
    flags = {"callback_url": "http://10.0.0.1:1", "function": "render", "invoke_client": "boto3"}
    with pytest.raises(ConfigError, match='invocation_type: "RequestResponse" needs invoke_'):
        load_settings(environ={}, flags={**flags, "invocation_type": "RequestResponse"})


def test_body_limit_cannot_exceed_the_event_limit():
    with pytest.raises(ConfigError, match="max_body_bytes"):
        load_settings(
            environ={},
            flags={
                "callback_url": "http://10.0.0.1:1",
                "invoker": "local",
                "max_body_bytes": "10",
                "max_event_bytes": "5",
            },
        )


@pytest.mark.parametrize("value", ["ftp://x", "http://", "http://h/?q=1"])
def test_callback_url_must_be_an_http_base(value):
    with pytest.raises(ConfigError, match="callback_url"):
        load_settings(environ={}, flags={"callback_url": value})


INTEGER_SETTINGS = [field.name for field in FIELDS if type(field.default) is int]


def config_error(tmp_path, toml: str = "", environ: dict | None = None, **flags: str) -> str:
    """The one-line error of loading these layers (the file only if `toml` is given)."""
    path = None
    if toml:
        path = tmp_path / "sssrd.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_settings(str(path) if path else None, environ=environ or {}, flags=flags)
    return str(error.value)


@pytest.mark.parametrize("name", INTEGER_SETTINGS)
@pytest.mark.parametrize("fraction", ["1.5", "2.9", "2.0"])
def test_integer_settings_refuse_fractions_from_every_source(tmp_path, name, fraction):
    env_name = "SSSRD_" + name.upper()
    flag = "--" + name.replace("_", "-")
    for message, source in [
        (config_error(tmp_path, f"{name} = {fraction}\n"), "sssrd.toml"),
        (config_error(tmp_path, environ={env_name: fraction}), env_name),
        (config_error(tmp_path, **{name: fraction}), flag),
    ]:
        assert message.startswith(f"{name}: expected a "), message
        assert "whole number" in message and fraction in message, message
        assert source in message, message


@pytest.mark.parametrize("name", INTEGER_SETTINGS)
def test_integer_settings_take_whole_numbers_from_every_source(tmp_path, name):
    config = tmp_path / "sssrd.toml"
    config.write_text(f"{name} = 3\n")
    assert getattr(load_settings(str(config), environ={}, defaults=LOCAL), name) == 3
    environ = {"SSSRD_" + name.upper(): " 4 "}
    assert getattr(load_settings(environ=environ, defaults=LOCAL), name) == 4
    assert getattr(load_settings(environ={}, flags={name: "5"}, defaults=LOCAL), name) == 5


KUBERNETES_SERVICE_LINKS = {  # what a Service named sssrd injects into every pod
    "SSSRD_PORT": "tcp://10.96.0.7:8080",
    "SSSRD_PORT_8080_TCP": "tcp://10.96.0.7:8080",
    "SSSRD_PORT_8080_TCP_ADDR": "10.96.0.7",
    "SSSRD_PORT_8080_TCP_PORT": "8080",
    "SSSRD_PORT_8080_TCP_PROTO": "tcp",
    "SSSRD_SERVICE_HOST": "10.96.0.7",
    "SSSRD_SERVICE_PORT": "8080",
    "SSSRD_SERVICE_PORT_HTTP": "8080",
}


def test_unknown_sssrd_variables_are_warnings_naming_them_never_refusals():
    environ = KUBERNETES_SERVICE_LINKS | {"SSSRD_MAX_PENDNG": "5", "SSSRD_COLOUR": ""}
    assert load_settings(environ=environ, defaults=LOCAL) == load_settings(
        environ={}, defaults=LOCAL
    )
    warnings = unknown_env(environ | {"SSSRD_CONFIG": "/x.toml", "SSSRD_MAX_PENDING": "5"})
    assert warnings[:2] == [
        "SSSRD_COLOUR: not a setting, ignored (environment variable)",
        "SSSRD_MAX_PENDNG: not a setting, ignored; did you mean SSSRD_MAX_PENDING? "
        "(environment variable)",
    ]
    assert warnings[2:] == [
        f"{name}: not a setting, ignored; a Kubernetes service link? (environment variable)"
        for name in sorted(KUBERNETES_SERVICE_LINKS)
    ]


@pytest.mark.parametrize(("strict", "code"), [((), 0), (("--strict",), 2)])
def test_check_config_warns_of_unknown_variables_and_strict_refuses_them(
    monkeypatch, capsys, strict, code
):
    for name in [name for name in os.environ if name.startswith("SSSRD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SSSRD_MAX_PENDNG", "5")
    args = ["check-config", "--callback-url=http://10.0.0.1:1", "--invoker=local", *strict]
    assert main(args) == code
    output = capsys.readouterr()
    assert output.err == (
        "sssrd: warning: SSSRD_MAX_PENDNG: not a setting, ignored; "
        "did you mean SSSRD_MAX_PENDING? (environment variable)\n"
    )
    assert "max_pending = 10000" in output.out


def test_settings_survive_the_trip_to_a_worker_unchanged():
    settings = load_settings(
        environ={},
        defaults=LOCAL,
        flags={"admin_listen": "off", "trusted_proxies": "10.0.0.0/8,::1", "idle_timeout": "2.5"},
    )
    assert settings_from_toml(settings.as_toml()) == settings


def test_sssrd_config_names_the_file_and_is_no_setting():
    assert load_settings(environ={"SSSRD_CONFIG": "/x.toml"}, defaults=LOCAL).invoker == "local"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('max_pending = "lots"', 'max_pending: expected a positive whole number, got "lots"'),
        ("max_pending = true", "max_pending: expected a positive whole number, got true"),
        ("max_pending = 0", "max_pending: expected a positive whole number, got 0"),
        ("invoke_retries = 9", "invoke_retries: expected a whole number from 0 to 5, got 9"),
        (
            'head_timeout = "soon"',
            'head_timeout: expected a positive number of seconds, got "soon"',
        ),
        ("head_timeout = false", "head_timeout: expected a positive number of seconds, got false"),
        ("listen = 8080", "listen: expected HOST:PORT such as 127.0.0.1:8080, got 8080"),
        ('listen = "web:80"', 'listen: host must be an IP address or localhost, got "web"'),
        ('invoker = "aws"', 'invoker: expected one of "local", "lambda", got "aws"'),
        ("invoker = true", 'invoker: expected one of "local", "lambda", got true'),
        ("function = 12", "function: expected text in quotes, got 12"),
        (
            'trusted_proxies = ["10.0.0.1/8"]',
            'trusted_proxies: expected CIDRs such as "10.0.0.0/8"',
        ),
        (
            "trusted_proxies = [7]",
            'trusted_proxies: expected CIDRs such as "10.0.0.0/8", as a list',
        ),
        (
            'endpoint_url = "http://h:99999"',
            'endpoint_url: expected an http(s)://HOST[:PORT] URL or ""',
        ),
        ("callback_url = 1.5", 'callback_url: expected an http(s)://HOST[:PORT] URL or "auto"'),
        (
            "handler = [1, true]",
            "handler: expected module:function such as sssrd.demo:handler, got [1, true]",
        ),
    ],
)
def test_errors_speak_in_the_users_terms(tmp_path, toml, message):
    error = config_error(tmp_path, toml + "\n")
    assert error.startswith(message), error
    for internal in ("literal", "convert", "True", "False", "None", "'", "base 10", "Errno"):
        assert internal not in error, error


@pytest.mark.parametrize("name", [field.name for field in FIELDS])
def test_every_setting_refuses_a_boolean_in_toml_terms(tmp_path, name):
    assert config_error(tmp_path, f"{name} = true\n").startswith(f"{name}: "), name
    assert "got true" in config_error(tmp_path, f"{name} = true\n")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'listen = "\xff\xfe"\n', "not UTF-8 text (byte 0xff at offset 10)"),
        (b"listen = \n", "not valid TOML: "),
    ],
)
def test_unreadable_config_files_are_one_line_errors(tmp_path, content, message):
    config = tmp_path / "sssrd.toml"
    config.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_settings(str(config), environ={}, flags={})
    assert str(error.value).startswith(f"config file {config}: {message}")
    with pytest.raises(ConfigError, match=r"Is a directory$"):
        load_settings(str(tmp_path), environ={}, flags={})


def test_workers_auto_is_the_usable_cpus_and_a_count_must_be_positive():
    auto = load_settings(environ={}, defaults=LOCAL)
    assert auto.workers == len(os.sched_getaffinity(0))
    assert load_settings(environ={"SSSRD_WORKERS": "3"}, defaults=LOCAL).workers == 3
    with pytest.raises(ConfigError, match="workers: expected a positive whole number"):
        load_settings(environ={}, defaults=LOCAL, flags={"workers": "0"})


@pytest.mark.parametrize(
    ("base", "offset", "shifted"),
    [
        ("http://10.0.1.23:8081", 1, "http://10.0.1.23:8082"),
        ("https://callbacks.internal", 2, "https://callbacks.internal:445"),
        ("http://[fd00::5]:8081/prefix", 3, "http://[fd00::5]:8084/prefix"),
    ],
)
def test_an_explicit_callback_base_names_each_workers_own_port(base, offset, shifted):
    assert shift_port(base, offset) == shifted
