"""The lean invoker's signer derives its SigV4 key once a day, and signs exactly as botocore."""

from __future__ import annotations

import datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from sssrd.invokers.aws import DailyKeySigV4Auth

CREDENTIALS = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
URL = "https://lambda.eu-west-1.amazonaws.com/2015-03-31/functions/render/invocations"


def signed(signer: SigV4Auth, when: datetime.datetime, payload: bytes) -> str:
    request = AWSRequest(method="POST", url=URL, data=payload, headers={"Host": "lambda.test"})
    with pytest.MonkeyPatch.context() as patch:  # botocore's own clock, not sssrd's code
        patch.setattr("botocore.auth.get_current_datetime", lambda: when)
        signer.add_auth(request)
    return request.headers["Authorization"]


def test_signatures_match_botocore_across_a_change_of_day():
    daily = DailyKeySigV4Auth(CREDENTIALS, "lambda", "eu-west-1")
    reference = SigV4Auth(CREDENTIALS, "lambda", "eu-west-1")
    midnight = datetime.datetime(2026, 12, 1, 23, 59, 59)
    moments = [midnight, midnight, midnight + datetime.timedelta(seconds=2), midnight]
    for number, when in enumerate(moments):
        payload = b'{"n": %d}' % number
        assert signed(daily, when, payload) == signed(reference, when, payload)
    assert daily.day_key is not None and daily.day_key[0] == "20261201"
