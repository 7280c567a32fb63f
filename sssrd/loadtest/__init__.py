"""`sssrd loadtest`: a streaming-aware HTTP/1.1 load generator and its reports.

It needs the `loadtest` extra (HDR histograms, llhttp, plotly, rich), which the daemon itself
never imports, so `main()` checks for those libraries first and names the extra in one line when
they are missing. The modules: targets (what to request), response (one response, sans-I/O),
engine (arrivals and connections), stats (HDR aggregates), terminal, htmlreport, command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

EXTRA_MODULES = ("hdrh", "httptools", "plotly", "rich")
EXIT_MISSING_EXTRA = 1


def main(argv: Sequence[str]) -> int:
    """Entry point of `sssrd loadtest ARGS`; returns the exit code."""
    missing = []
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(
            f"sssrd loadtest: needs the loadtest extra (missing {', '.join(missing)}): "
            "pip install 'sssrd[loadtest]'",
            file=sys.stderr,
        )
        return EXIT_MISSING_EXTRA
    from sssrd.loadtest.command import run_command

    return run_command(argv)
