"""The lean invoker's signer signs exactly as botocore, header for header, across days."""

from __future__ import annotations

import calendar
import datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given
from hypothesis import strategies as st

from sssrd.invokers.sigv4 import InvokeSigner

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CREDENTIALS = ReadOnlyCredentials("AKIDEXAMPLE", SECRET, None)
SESSION = ReadOnlyCredentials("ASIAEXAMPLE", SECRET, "FQoGZXIvYXdzEJr//////////wEaDOExampleToken=")
HOST = "lambda.eu-west-1.amazonaws.com"
FIXED = (("X-Amz-Invocation-Type", "Event"),)
TARGETS = (
    "/2015-03-31/functions/render/invocations",
    "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aeu-west-1%3A1%3Afunction%3Ar/invocations"
    "?Qualifier=live",
    "/2015-03-31/functions/my-fn_1/invocations?Qualifier=%24LATEST",
)


def botocore_headers(
    credentials: ReadOnlyCredentials,
    target: str,
    when: datetime.datetime,
    payload: bytes,
    fixed: tuple[tuple[str, str], ...] = FIXED,
) -> list[tuple[bytes, bytes]]:
    """What the lean invoker sent before: an AWSRequest signed by botocore's SigV4Auth."""
    headers = {**dict(fixed), "Host": HOST, "Content-Length": str(len(payload))}
    request = AWSRequest(
        method="POST", url=f"https://{HOST}{target}", data=payload, headers=headers
    )
    with pytest.MonkeyPatch.context() as patch:  # botocore's own clock, not sssrd's code
        patch.setattr("botocore.auth.get_current_datetime", lambda: when)
        SigV4Auth(credentials, "lambda", "eu-west-1").add_auth(request)
    return [(name.encode(), value.encode()) for name, value in request.headers.items()]


def epoch(when: datetime.datetime) -> float:
    return calendar.timegm(when.timetuple()) + when.microsecond / 1e6


@given(
    payload=st.binary(max_size=300),
    target=st.sampled_from(TARGETS),
    credentials=st.sampled_from([CREDENTIALS, SESSION]),
    offset=st.integers(0, 10**9),
    invocation_type=st.sampled_from(["Event", "RequestResponse"]),
)
def test_signs_as_botocore(payload, target, credentials, offset, invocation_type):
    when = datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=offset, microseconds=1)
    fixed = (("X-Amz-Invocation-Type", invocation_type),)
    signer = InvokeSigner(credentials, "eu-west-1", HOST, target, fixed)
    ours = signer.sign(payload, now=epoch(when))
    assert ours == botocore_headers(credentials, target, when, payload, fixed)


def test_the_key_and_the_stamp_follow_the_clock_across_midnight():
    signer = InvokeSigner(CREDENTIALS, "eu-west-1", HOST, TARGETS[0], FIXED)
    midnight = datetime.datetime(2026, 12, 1, 23, 59, 59)
    moments = [midnight, midnight, midnight + datetime.timedelta(seconds=2), midnight]
    for number, when in enumerate(moments):
        payload = b'{"n": %d}' % number
        expected = botocore_headers(CREDENTIALS, TARGETS[0], when, payload)
        assert signer.sign(payload, now=epoch(when)) == expected
    assert signer.day_key is not None and signer.day_key[0] == "20261201"
