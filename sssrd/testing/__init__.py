"""Local stand-ins for the AWS edges sssrd talks to, for tests and benchmarks.

`FakeLambda` serves the Lambda Invoke API and runs Python handlers; `FakeIMDS` serves EC2
instance metadata (IMDSv2). Both are real HTTP servers on 127.0.0.1 that boto3/botocore reach
through ordinary endpoint settings. Names are imported lazily so that
`python -m sssrd.testing.fake_lambda` does not import its own module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sssrd.invokers.runtime import LambdaContext
    from sssrd.testing.fake_imds import FakeIMDS
    from sssrd.testing.fake_lambda import Behaviour, FakeLambda, Invocation

__all__ = ["Behaviour", "FakeIMDS", "FakeLambda", "Invocation", "LambdaContext"]

_HOMES = {
    "FakeIMDS": "sssrd.testing.fake_imds",
    "Behaviour": "sssrd.testing.fake_lambda",
    "FakeLambda": "sssrd.testing.fake_lambda",
    "Invocation": "sssrd.testing.fake_lambda",
    "LambdaContext": "sssrd.invokers.runtime",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sssrd.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
