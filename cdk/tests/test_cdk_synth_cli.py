"""`cdk synth` with the real CLI, offline: cdk.context.json answers every lookup (cdk_cli.py)."""

from __future__ import annotations

import json


def test_cdk_synth_runs_offline_and_writes_the_template(cli_synth):
    done, assembly = cli_synth.result()
    assert done.returncode == 0, done.stderr[-3000:]
    template = json.loads((assembly / "Sssrd.template.json").read_text())
    groups = [r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::SecurityGroup"]
    assert {g["Properties"]["VpcId"] for g in groups} == {"vpc-0a1b2c3d4e5f60718"}
    manifest = json.loads((assembly / "manifest.json").read_text())
    assert "missing" not in manifest
    assert "PrometheusSecurityGroupId" in template["Outputs"]
