"""Runs `cdk synth` with the real CLI, offline; conftest starts it in the background.

The CLI (npm's aws-cdk) is installed once per aws-cdk-lib version under the test cache
(SSSRD_TEST_CACHE, default /var/cache/sssrd-test), so it is never older than the library's
cloud assembly. `--no-lookups` turns a lookup missing from cdk.context.json into a failure, and
no AWS credentials are visible, so nothing reaches AWS. The synth takes ~15 s of CPU, mostly
the CLI's and jsii's start-up, so it runs on a thread while the in-process synths run.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ACCOUNT, AMI, CDK_DIR, REGION

CACHE = Path(os.environ.get("SSSRD_TEST_CACHE", "/var/cache/sssrd-test")) / "aws-cdk-cli"


def cdk_cli() -> Path:
    home = CACHE / importlib.metadata.version("aws-cdk-lib")
    cli = home / "node_modules" / ".bin" / "cdk"
    if not cli.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as work:
            npm = ["npm", "install", "--prefix", work, "--no-audit", "--no-fund", "aws-cdk@2"]
            done = subprocess.run(npm, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(npm)} failed:\n{done.stderr[-2000:]}")
            try:
                os.rename(work, home)  # atomic: a concurrent run either sees it whole or not
            except OSError:
                if not cli.exists():
                    raise
            else:
                os.mkdir(work)  # for TemporaryDirectory's cleanup
    return cli


def offline_env(home: Path) -> dict[str, str]:
    keep = {"LANG", "LC_ALL", "TERM", "TMPDIR", "SSSRD_TEST_CACHE"}
    env = {key: value for key, value in os.environ.items() if key in keep}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # app: python3
        HOME=str(home),  # no ~/.aws, and the CLI's own cache stays in the test's directory
        AWS_EC2_METADATA_DISABLED="true",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        CI="true",
    )
    return env


def synth(output: Path, *context: str) -> subprocess.CompletedProcess[str]:
    """`cdk synth` into `output`/cdk.out with the test account, region and AMI plus `context`."""
    arguments = [f"ami={AMI}", f"account={ACCOUNT}", f"region={REGION}", *context]
    command = [str(cdk_cli()), "synth", "--no-lookups", "--no-notices", "--no-version-reporting"]
    command += ["--quiet", "--output", str(output / "cdk.out")]
    for argument in arguments:
        command += ["--context", argument]
    return subprocess.run(
        command, cwd=CDK_DIR, env=offline_env(output), capture_output=True, text=True, timeout=300
    )
