"""The render Lambda of the fleet in miniature (tests/fleet.py), run by the fake Invoke API.

A page streams for `?ms=` milliseconds: the prelude and a first chunk at once, then one chunk
every CHUNK_INTERVAL_S, then the final chunk, through sssrd.callback as a Lambda author writes
it. Every `?probe=`-th request (by its `?n=`) first sends its callback, token and all, to another
instance of the fleet (FLEET_INSTANCE_IPS) and appends what that instance answered to
FLEET_PROBE_LOG: a callback that reaches the wrong instance must be refused, never streamed.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

from sssrd import callback

CHUNK_INTERVAL_S = 0.25
PRELUDE_TYPE = "application/vnd.awslambda.http-integration-response"


def handler(event: dict[str, Any], context: object) -> None:
    query = event.get("queryStringParameters") or {}
    probe_every = int(query.get("probe", "0"))
    if probe_every and int(query.get("n", "1")) % probe_every == 0:
        probe_wrong_instance(event)
    seconds = int(query.get("ms", "1000")) / 1000
    ends = time.monotonic() + seconds
    with callback.open_stream(event, headers={"content-type": "text/html"}) as out:
        out.write("<!doctype html><title>fleet</title><p>first screen\n")
        while (left := ends - time.monotonic()) > 0:
            time.sleep(min(CHUNK_INTERVAL_S, left))
            out.write(f"<p>{time.time():.3f}\n")


def probe_wrong_instance(event: dict[str, Any]) -> None:
    """POST this render's callback to another instance's address; record how it answered."""
    url = urlsplit(event["sssrd"]["callbackUrl"])
    others = [ip for ip in os.environ["FLEET_INSTANCE_IPS"].split(",") if ip != url.hostname]
    wrong = others[0]
    connection = http.client.HTTPConnection(wrong, url.port, timeout=10)
    try:
        connection.request(
            "POST",
            url.path,
            body=b'{"statusCode": 200}' + b"\0" * 8 + b"not your viewer",
            headers={
                "Authorization": f"Bearer {event['sssrd']['token']}",
                "Content-Type": PRELUDE_TYPE,
            },
        )
        answer: int | str = connection.getresponse().status
    except ConnectionRefusedError:
        answer = "refused"
    finally:
        connection.close()
    record = {"own": url.hostname, "wrong": wrong, "port": url.port, "answer": answer}
    with open(os.environ["FLEET_PROBE_LOG"], "a") as log:
        log.write(json.dumps(record) + "\n")
