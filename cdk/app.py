#!/usr/bin/env python3
"""Entry point for `cdk synth` / `cdk deploy` (cdk.json runs it): the sssrd fleet.

Parameters are CDK context (`-c key=value` or cdk.json); cdk/README.md lists them. An invalid
one stops the synth with one line naming the key.
"""

from __future__ import annotations

import os
import sys

from sssrd_cdk.parameters import ParameterError
from sssrd_cdk.stack import build_app


def main() -> int:
    try:
        app, _ = build_app(
            {}, os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")
        )
    except ParameterError as exc:
        print(f"sssrd-cdk: {exc}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
