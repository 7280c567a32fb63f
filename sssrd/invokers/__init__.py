"""Invokers start renders: interchangeable ways to hand an encoded event to a render function.

`base` defines the interface and its error; `local` runs a Python handler in-process (for
`sssrd dev` and the tests), `aws` sends asynchronous invokes to AWS Lambda (a lean client or
boto3); `runtime` is what a handler sees of Lambda's Python runtime (the context object, the
worker threads), shared with the fake Lambda in sssrd.testing. `make_invoker` picks one.
"""

from __future__ import annotations

from sssrd.config import Settings
from sssrd.invokers.base import InvokeError, Invoker

__all__ = ["InvokeError", "Invoker", "make_invoker"]


def make_invoker(settings: Settings) -> Invoker:
    """The configured invoker; ValueError (shown at startup) if it cannot be built."""
    if settings.invoker == "local":
        from sssrd.invokers.local import LocalInvoker

        return LocalInvoker(settings.handler, settings.local_workers)
    from sssrd.invokers import aws  # boto3 is slow to import; `sssrd dev` does not need it

    if settings.invoke_client == "boto3":
        return aws.Boto3Invoker(settings)
    return aws.LeanInvoker(settings)
