"""Findings of checkov (and other CloudFormation scanners) that the stack accepts, with why.

cdk-nag's suppressions sit next to the resources they concern; checkov's checks that cdk-nag
does not have are recorded the same way, as `Metadata.checkov.skip` on the resource (which
checkov reads from the synthesized template), each with its reason.
"""

from __future__ import annotations

from aws_cdk import CfnResource
from constructs import IConstruct


def accept(construct: IConstruct, check_id: str, reason: str) -> None:
    """Record that `construct` deliberately fails checkov's `check_id`, and why."""
    resource = construct.node.default_child
    assert isinstance(resource, CfnResource), construct
    skips = resource.get_metadata("checkov") or {"skip": []}
    skips["skip"].append({"id": check_id, "comment": reason})
    resource.add_metadata("checkov", skips)
