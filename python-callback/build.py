"""Build the `sssrd-callback` wheel: sssrd/callback alone, for a Lambda zip (stdlib only).

    python3 python-callback/build.py [OUTDIR]     # default: python-callback/dist
    pip install --target build/ python-callback/dist/sssrd_callback-*.whl

A wheel is a zip with a .dist-info directory (PEP 427); this writes one directly, so building
needs no setuptools, no network and no daemon dependency. `sssrd` is left a namespace package
(no sssrd/__init__.py), so the wheel never shadows a full sssrd installed beside it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "sssrd_callback"
SUMMARY = "Lambda-side helper for sssrd: stream a render, or run an ASGI/WSGI app (stdlib only)"


def version() -> str:
    source = (ROOT / "sssrd" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', source, re.MULTILINE)
    assert found, "no __version__ in sssrd/__init__.py"
    return found.group(1)


def record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build(outdir: Path) -> Path:
    release = version()
    dist_info = f"{NAME}-{release}.dist-info"
    files = {
        f"sssrd/callback/{source.name}": source.read_bytes()
        for source in sorted((ROOT / "sssrd" / "callback").glob("*.py"))
    }
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        "Name: sssrd-callback\n"
        f"Version: {release}\n"
        f"Summary: {SUMMARY}\n"
        "Requires-Python: >=3.11\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: sssrd python-callback/build.py\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [record_line(path, data) for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    outdir.mkdir(parents=True, exist_ok=True)
    wheel = outdir / f"{NAME}-{release}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "dist"))
