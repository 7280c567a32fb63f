"""The instances' user data: the AMI's first-boot contract, as a cloud-init `#cloud-config`.

The AMI holds everything; user data only writes /etc/sssrd/sssrd.toml and restarts sssrd
(`runcmd: [[systemctl, restart, sssrd.service]]`), so an instance passes the ALB's health check
only once it is configured. The document is JSON, which is YAML too: cloud-init reads it as
it is, and nothing here has to get YAML's quoting right. Values may be CDK tokens (the function
ARN); they are resolved inside the string CloudFormation joins.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sssrd.config import toml_literal

CONFIG_PATH = "/etc/sssrd/sssrd.toml"
RESTART = ["systemctl", "restart", "sssrd.service"]


def toml_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    return toml_literal(value)


def sssrd_toml(settings: Mapping[str, Any]) -> str:
    """sssrd.toml holding exactly these settings; everything else keeps the AMI's defaults."""
    lines = ["# Written by the sssrd CDK stack's user data; change it with `cdk deploy`."]
    lines += [f"{name} = {toml_value(value)}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def cloud_config(settings: Mapping[str, Any]) -> str:
    document = {
        "write_files": [
            {
                "path": CONFIG_PATH,
                "owner": "root:root",
                "permissions": "0644",  # no secret inside; sssrd runs as a dynamic user
                "content": sssrd_toml(settings),
            }
        ],
        "runcmd": [RESTART],
    }
    return "#cloud-config\n" + json.dumps(document, indent=2) + "\n"
