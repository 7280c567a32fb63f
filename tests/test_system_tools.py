"""A test that needs a missing system tool stops with one line naming the Debian package."""

from __future__ import annotations

import pytest
from harness import ROOT
from system_tools import PACKAGE_OF, require, tool


def test_missing_tool_fails_with_one_line_naming_its_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failure:
        tool("lintian")
    message = str(failure.value)
    assert message.count("\n") == 0
    assert message.startswith("lintian not found: install the Debian package(s) lintian")
    with pytest.raises(pytest.fail.Exception, match=r"package\(s\) iproute2 systemd-container"):
        require("systemd-nspawn", "ss")


def test_every_listed_package_is_one_make_test_installs():
    listed = (ROOT / "tests" / "system-packages.txt").read_text()
    names = {line.split("#")[0].strip() for line in listed.splitlines()} - {""}
    always_there = {"dpkg", "tar", "util-linux", "systemd"}  # essential, or pulled in by nspawn
    assert set(PACKAGE_OF.values()) - always_there <= names
