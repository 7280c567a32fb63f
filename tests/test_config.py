"""Settings: parsing rules and the shipped default config staying complete."""

from __future__ import annotations

import re

import pytest
from harness import ROOT

from sssrd.config import FIELDS, ConfigError, load_settings, parse_address


def test_shipped_config_documents_every_setting_with_its_default():
    text = (ROOT / "packaging" / "sssrd.toml").read_text()
    documented = dict(re.findall(r"^# (\w+) = (.+)$", text, re.MULTILINE))
    assert set(documented) == {field.name for field in FIELDS}
    for field in FIELDS:
        default = field.default
        shown = f'"{default}"' if isinstance(default, str) else repr(default)
        assert documented[field.name] == shown, field.name


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    for field in FIELDS:
        assert f"`{field.name}`" in readme, field.name


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
