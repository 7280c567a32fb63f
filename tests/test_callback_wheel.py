"""The sssrd-callback wheel holds the helper and its adapters alone and works without the daemon.

Builds the wheel with python-callback/build.py, installs it with pip into a fresh target
directory and imports the adapters from there in an interpreter that sees nothing else (-I -S: no
site-packages, so no h11, uvloop or boto3 to lean on).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.daemon  # starts pip and a Python subprocess


def test_wheel_installs_alone_and_imports_the_adapters_without_daemon_dependencies(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "python-callback" / "build.py"), str(tmp_path / "dist")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("sssrd_callback-*-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "sssrd",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    assert all(name.startswith("sssrd/callback/") for name in names if name.startswith("sssrd/"))
    target = tmp_path / "zip"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    probe = (
        "import sys; from sssrd.callback import asgi, wsgi; import sssrd.callback as c;"
        "print(c.__file__);"
        "print(sorted({'h11', 'uvloop', 'boto3', 'prometheus_client'} & set(sys.modules)))"
    )
    script = f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"
    shown = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.splitlines()
    assert shown == [str(target / "sssrd" / "callback" / "__init__.py"), "[]"]
