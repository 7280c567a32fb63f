"""FakeLambda driven the way sssrd drives real Lambda: boto3 over HTTP on 127.0.0.1.

Handlers here signal through threading.Event / wait_for_* (never sleeps); failure modes are
checked as boto3 surfaces them (ClientError code and HTTP status) with client retries off.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ReadTimeoutError

from sssrd.testing.fake_lambda import Behaviour, FakeLambda, LambdaContext

INVOKE_PATH = "/2015-03-31/functions/render/invocations"


class Recorder:
    """A handler that remembers each (event, context) and signals each run."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, LambdaContext]] = []
        self.ran = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event: object, context: LambdaContext) -> dict:
        with self._lock:
            self.calls.append((event, context))
        self.ran.set()
        return {"echo": event}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def fake(recorder: Recorder) -> Iterator[FakeLambda]:
    with FakeLambda(functions={"render": recorder}) as running:
        yield running


def lambda_client(fake: FakeLambda, *, secret: str | None = None, **config: object):
    return boto3.client(
        "lambda",
        endpoint_url=fake.endpoint_url,
        region_name=fake.region,
        aws_access_key_id=fake.access_key,
        aws_secret_access_key=secret or fake.secret_key,
        config=Config(retries={"max_attempts": 0}, **config),
    )


def error_of(raised: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def signed_headers(fake: FakeLambda, body: bytes, *, secret: str | None = None) -> dict[str, str]:
    """Headers botocore would send for an Event invoke of `render` carrying `body`."""
    host = fake.endpoint_url.removeprefix("http://")
    request = AWSRequest(
        method="POST",
        url=f"{fake.endpoint_url}{INVOKE_PATH}",
        data=body,
        headers={"X-Amz-Invocation-Type": "Event", "Host": host},
    )
    credentials = Credentials(fake.access_key, secret or fake.secret_key)
    SigV4Auth(credentials, "lambda", fake.region).add_auth(request)
    return dict(request.headers.items())


def connect(fake: FakeLambda, timeout: float = 5.0) -> http.client.HTTPConnection:
    host, port = fake.endpoint_url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


# -- the normal path ----------------------------------------------------------------------------


def test_event_invoke_answers_202_with_request_id_then_runs_handler(fake, recorder):
    response = lambda_client(fake).invoke(
        FunctionName="render", InvocationType="Event", Payload=b'{"page": "/home"}'
    )

    assert response["StatusCode"] == 202
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-length"] == "0"
    assert recorder.ran.wait(5)
    event, context = recorder.calls[0]
    assert event == {"page": "/home"}
    assert context.aws_request_id == headers["x-amzn-requestid"]


def test_handler_can_call_back_over_real_http_on_its_own(fake):
    received: list[bytes] = []
    delivered = threading.Event()

    class CallbackHandler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            delivered.set()

        def log_message(self, *args):
            pass

    def render_and_call_back(event, context):
        connection = http.client.HTTPConnection(*event["callback"], timeout=5)
        connection.request("POST", "/v1/callback/1", body=f"<p>{event['page']}</p>".encode())
        connection.getresponse().read()

    fake.add_function("render", render_and_call_back)
    with ThreadingHTTPServer(("127.0.0.1", 0), CallbackHandler) as callback_server:
        threading.Thread(target=callback_server.serve_forever, daemon=True).start()
        payload = {"page": "home", "callback": list(callback_server.server_address)}
        lambda_client(fake).invoke(
            FunctionName="render", InvocationType="Event", Payload=json.dumps(payload)
        )
        assert delivered.wait(5)
        callback_server.shutdown()
    assert received == [b"<p>home</p>"]


def test_invocation_record_holds_function_qualifier_type_and_decoded_event(fake):
    arn = fake.function_arn("render")
    lambda_client(fake).invoke(
        FunctionName=arn, Qualifier="live", InvocationType="Event", Payload=b'{"a": [1, 2]}'
    )

    [invocation] = fake.wait_for_invocations(1)
    assert invocation.function_name == "render"
    assert invocation.qualifier == "live"
    assert invocation.invocation_type == "Event"
    assert invocation.event == {"a": [1, 2]}
    assert invocation.behaviour == Behaviour("normal")


@pytest.mark.parametrize(
    ("function_name", "qualifier"),
    [
        ("render:7", "7"),
        ("123456789012:function:render", None),
        ("arn:aws:lambda:us-east-1:123456789012:function:render:$LATEST", "$LATEST"),
    ],
)
def test_function_may_be_named_by_name_qualifier_or_arn(fake, function_name, qualifier):
    lambda_client(fake).invoke(FunctionName=function_name, InvocationType="Event")

    [invocation] = fake.wait_for_invocations(1)
    assert (invocation.function_name, invocation.qualifier) == ("render", qualifier)


def test_request_response_returns_handler_result_and_executed_version(fake):
    response = lambda_client(fake).invoke(FunctionName="render", Qualifier="3", Payload=b"[1]")

    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "3"
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {"echo": [1]}


def test_request_response_handler_exception_is_unhandled_function_error(fake):
    def broken(event, context):
        raise KeyError("template")

    fake.add_function("broken", broken)
    response = lambda_client(fake).invoke(FunctionName="broken")

    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    body = json.loads(response["Payload"].read())
    assert body["errorType"] == "KeyError"
    assert "template" in body["errorMessage"]


def test_request_response_over_its_timeout_is_answered_task_timed_out_at_the_timeout():
    release = threading.Event()
    with FakeLambda(
        functions={"slow": lambda event, context: release.wait(10)}, timeout_s=0.2
    ) as fake:
        started = time.monotonic()
        response = lambda_client(fake).invoke(FunctionName="slow")
        answered_after = time.monotonic() - started
        release.set()
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    body = json.loads(response["Payload"].read())
    assert body["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 0.20 seconds" in body["errorMessage"]
    assert answered_after < 5  # at the timeout, not when the handler gave up (10 s)


def test_request_response_payload_over_six_megabytes_is_413(fake):
    payload = json.dumps({"body": "x" * (6 * 1024 * 1024)})
    with pytest.raises(ClientError) as raised:
        lambda_client(fake).invoke(FunctionName="render", Payload=payload)

    assert error_of(raised) == ("RequestTooLargeException", 413)


def test_context_mimics_the_python_runtime(fake, recorder):
    lambda_client(fake).invoke(FunctionName="render:live")

    _, context = recorder.calls[0]
    assert context.function_name == "render"
    assert context.invoked_function_arn == fake.function_arn("render", "live")
    assert context.function_version == "$LATEST"
    assert context.memory_limit_in_mb == "128"
    assert context.log_group_name == "/aws/lambda/render"
    assert 0 < context.get_remaining_time_in_millis() <= 30_000


def test_a_default_handler_serves_every_function_name(recorder):
    with FakeLambda(handler=recorder) as fake:
        lambda_client(fake).invoke(FunctionName="anything-at-all")
    assert recorder.calls[0][1].function_name == "anything-at-all"


def test_keep_alive_connection_carries_many_invokes(fake):
    connection = connect(fake)
    for page in range(3):
        body = json.dumps({"page": page}).encode()
        connection.request("POST", INVOKE_PATH, body=body, headers=signed_headers(fake, body))
        response = connection.getresponse()
        assert response.status == 202
        assert response.read() == b""
        assert response.getheader("Connection") == "keep-alive"
    assert [i.event for i in fake.wait_for_invocations(3)] == [{"page": p} for p in range(3)]
    connection.close()


def test_pipelined_requests_are_answered_in_order(fake):
    def raw_request(page: int) -> bytes:
        body = json.dumps({"page": page}).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in signed_headers(fake, body).items())
        length = f"Content-Length: {len(body)}\r\n"
        return f"POST {INVOKE_PATH} HTTP/1.1\r\n{head}{length}\r\n".encode() + body

    host, port = fake.endpoint_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(raw_request(1) + raw_request(2))
        received = b""
        while received.count(b"HTTP/1.1 202 Accepted") < 2:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {received!r}"
            received += chunk

    ids = [i.request_id.encode() for i in fake.wait_for_invocations(2)]
    assert [i.event for i in fake.invocations] == [{"page": 1}, {"page": 2}]
    assert received.index(ids[0]) < received.index(ids[1])


def test_malformed_request_gets_400_and_the_connection_closes(fake):
    host, port = fake.endpoint_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk

    assert received.startswith(b"HTTP/1.1 400 ")


def test_many_concurrent_invokes_are_all_recorded_and_run(fake):
    client = lambda_client(fake, max_pool_connections=8)

    def invoke_many(worker: int) -> None:
        for n in range(25):
            client.invoke(
                FunctionName="render", InvocationType="Event", Payload=json.dumps([worker, n])
            )["Payload"].read()

    threads = [threading.Thread(target=invoke_many, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    events = {tuple(i.event) for i in fake.wait_for_invocations(200)}
    assert events == {(w, n) for w in range(8) for n in range(25)}
    assert fake.wait_for_handler_runs(200, timeout=30) == 200


@pytest.mark.daemon
def test_env_lets_a_subprocess_invoke_with_plain_boto3(fake, tmp_path):
    env = {
        **fake.env(),
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    code = "import boto3; boto3.client('lambda').invoke(FunctionName='render', Payload=b'[42]')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)

    assert fake.wait_for_invocations(1)[0].event == [42]


@pytest.mark.daemon
def test_command_line_serves_a_handler_module_and_prints_the_endpoint(tmp_path):
    (tmp_path / "cli_handler.py").write_text("def handler(event, context):\n    return event\n")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "sssrd.testing.fake_lambda", "--listen", "127.0.0.1:0"),
            *("--handler", "cli_handler:handler", "--function", "render"),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = process.stdout.readline().strip()
        client = boto3.client(
            "lambda",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="AKIDSSSRDTEST",
            aws_secret_access_key="sssrd-test-secret",
            config=Config(retries={"max_attempts": 0}),
        )
        assert endpoint.startswith("http://127.0.0.1:")
        response = client.invoke(FunctionName="render", Payload=b'"hi"')
        assert json.loads(response["Payload"].read()) == "hi"
        with pytest.raises(ClientError) as raised:
            client.invoke(FunctionName="other")
        assert error_of(raised) == ("ResourceNotFoundException", 404)
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()


# -- refusals -----------------------------------------------------------------------------------


def test_unknown_function_is_404_resource_not_found(fake):
    with pytest.raises(ClientError) as raised:
        lambda_client(fake).invoke(FunctionName="missing", InvocationType="Event")

    assert error_of(raised) == ("ResourceNotFoundException", 404)
    assert fake.invocations == []


def test_wrong_secret_is_403_invalid_signature_and_nothing_runs(fake):
    with pytest.raises(ClientError) as raised:
        lambda_client(fake, secret="not-the-secret").invoke(
            FunctionName="render", InvocationType="Event"
        )

    assert error_of(raised) == ("InvalidSignatureException", 403)
    assert fake.invocations == []


def test_unknown_access_key_is_403_unrecognized_client(fake):
    client = boto3.client(
        "lambda",
        endpoint_url=fake.endpoint_url,
        region_name=fake.region,
        aws_access_key_id="AKIDSOMEONEELSE",
        aws_secret_access_key=fake.secret_key,
        config=Config(retries={"max_attempts": 0}),
    )
    with pytest.raises(ClientError) as raised:
        client.invoke(FunctionName="render", InvocationType="Event")

    assert error_of(raised) == ("UnrecognizedClientException", 403)


def test_unsigned_request_gets_lambdas_json_error_body(fake):
    connection = connect(fake)
    connection.request("POST", INVOKE_PATH, body=b"{}", headers={"X-Amz-Invocation-Type": "Event"})
    response = connection.getresponse()

    assert response.status == 403
    assert response.getheader("x-amzn-ErrorType") == "InvalidSignatureException"
    assert response.getheader("Content-Type") == "application/json"
    body = json.loads(response.read())
    assert body["Type"] == "User"
    assert body["message"]
    connection.close()


def test_body_changed_after_signing_fails_the_signature(fake):
    headers = signed_headers(fake, b'{"page": 1}')
    connection = connect(fake)
    connection.request("POST", INVOKE_PATH, body=b'{"page": 2}', headers=headers)
    response = connection.getresponse()
    response.read()

    assert response.status == 403
    assert fake.invocations == []
    connection.close()


def test_event_payload_over_one_megabyte_is_413(fake):
    payload = json.dumps({"body": "x" * (1024 * 1024)})
    with pytest.raises(ClientError) as raised:
        lambda_client(fake).invoke(FunctionName="render", InvocationType="Event", Payload=payload)

    assert error_of(raised) == ("RequestTooLargeException", 413)


def test_payload_that_is_not_json_is_400_invalid_request_content(fake):
    with pytest.raises(ClientError) as raised:
        lambda_client(fake).invoke(FunctionName="render", InvocationType="Event", Payload=b"{")

    assert error_of(raised) == ("InvalidRequestContentException", 400)


# -- scripted behaviours ------------------------------------------------------------------------


def test_throttle_is_429_with_the_body_lambda_sends(fake, recorder):
    fake.set_behaviour("throttle")
    with pytest.raises(ClientError) as raised:
        lambda_client(fake).invoke(FunctionName="render", InvocationType="Event")

    assert error_of(raised) == ("TooManyRequestsException", 429)
    assert raised.value.response["Reason"] == "ReservedFunctionConcurrentInvocationsExceeded"
    assert raised.value.response["Error"]["Message"] == "Rate Exceeded."
    assert fake.wait_for_invocations(1)[0].behaviour.mode == "throttle"
    assert recorder.calls == []


def test_error_is_500_service_exception(fake):
    fake.set_behaviour("error", "render")
    with pytest.raises(ClientError) as raised:
        lambda_client(fake).invoke(FunctionName="render", InvocationType="Event")

    assert error_of(raised) == ("ServiceException", 500)


def test_throttle_once_then_succeed_lets_boto3_retry_through(fake, recorder):
    fake.set_behaviour("throttle", times=1)
    client = boto3.client(
        "lambda",
        endpoint_url=fake.endpoint_url,
        region_name=fake.region,
        aws_access_key_id=fake.access_key,
        aws_secret_access_key=fake.secret_key,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )
    response = client.invoke(FunctionName="render", InvocationType="Event")

    assert response["StatusCode"] == 202
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    modes = [i.behaviour.mode for i in fake.wait_for_invocations(2)]
    assert modes == ["throttle", "normal"]
    assert recorder.ran.wait(5)


def test_one_shot_behaviours_queue_before_the_steady_one(fake):
    fake.set_behaviour("error")
    fake.set_behaviour("throttle", times=2)
    client = lambda_client(fake)
    codes = []
    for _ in range(4):
        with pytest.raises(ClientError) as raised:
            client.invoke(FunctionName="render", InvocationType="Event")
        codes.append(error_of(raised)[1])

    assert codes == [429, 429, 500, 500]


def test_behaviour_for_one_function_leaves_others_normal(fake, recorder):
    fake.add_function("other", recorder)
    fake.set_behaviour("throttle", "render")
    client = lambda_client(fake)

    assert client.invoke(FunctionName="other", InvocationType="Event")["StatusCode"] == 202
    with pytest.raises(ClientError):
        client.invoke(FunctionName="render", InvocationType="Event")


def test_hang_never_answers_so_the_client_read_times_out(fake, recorder):
    fake.set_behaviour("hang")
    client = lambda_client(fake, read_timeout=0.5, connect_timeout=2)
    with pytest.raises(ReadTimeoutError):
        client.invoke(FunctionName="render", InvocationType="Event")

    assert fake.wait_for_invocations(1)[0].behaviour.mode == "hang"
    assert recorder.calls == []


def test_stopping_drops_a_hung_request_unanswered(recorder):
    fake = FakeLambda(functions={"render": recorder}).start()
    fake.set_behaviour("hang")
    connection = connect(fake)
    connection.request("POST", INVOKE_PATH, body=b"{}", headers=signed_headers(fake, b"{}"))
    fake.wait_for_invocations(1)

    fake.stop()

    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        connection.getresponse()
    connection.close()


def test_never_answers_202_but_does_not_run_the_handler(recorder):
    # One worker runs handlers in submission order, so had the first been run, it came first.
    with FakeLambda(functions={"render": recorder}, workers=1) as fake:
        fake.set_behaviour("never", times=1)
        client = lambda_client(fake)
        first = client.invoke(FunctionName="render", InvocationType="Event", Payload=b"[1]")
        client.invoke(FunctionName="render", InvocationType="Event", Payload=b"[2]")
        fake.wait_for_handler_runs(1)

    assert first["StatusCode"] == 202
    assert [event for event, _ in recorder.calls] == [[2]]


def test_late_runs_the_handler_after_the_delay(fake):
    started_at: list[float] = []
    started = threading.Event()

    def note_start(event, context):
        started_at.append(time.time())
        started.set()

    fake.add_function("render", note_start)
    fake.set_behaviour("late=0.2")
    response = lambda_client(fake).invoke(FunctionName="render", InvocationType="Event")

    assert response["StatusCode"] == 202
    assert started.wait(5)
    assert started_at[0] - fake.invocations[0].received_at >= 0.2


def test_twice_runs_the_handler_twice_for_one_invocation(fake, recorder):
    fake.set_behaviour("twice")
    lambda_client(fake).invoke(FunctionName="render", InvocationType="Event", Payload=b"[7]")

    fake.wait_for_handler_runs(2)
    assert len(fake.invocations) == 1
    assert [event for event, _ in recorder.calls] == [[7], [7]]
    assert recorder.calls[0][1].aws_request_id == recorder.calls[1][1].aws_request_id


def test_event_handler_exception_is_recorded_not_raised(fake):
    def broken(event, context):
        raise RuntimeError("render failed")

    fake.add_function("render", broken)
    lambda_client(fake).invoke(FunctionName="render", InvocationType="Event")

    fake.wait_for_handler_runs(1)
    [failure] = fake.handler_failures
    assert str(failure.error) == "render failed"


def test_only_the_last_records_are_kept_when_asked_but_all_are_counted(recorder):
    with FakeLambda(functions={"render": recorder}, keep_invocations=2) as fake:
        client = lambda_client(fake)
        for n in range(5):
            client.invoke(FunctionName="render", InvocationType="Event", Payload=json.dumps(n))

        kept = fake.wait_for_invocations(5)

    assert [i.event for i in kept] == [3, 4]
    assert fake.invocation_count == 5


def test_wait_for_invocations_times_out_with_a_count(fake):
    with pytest.raises(TimeoutError, match="0 of 1"):
        fake.wait_for_invocations(1, timeout=0.05)


@pytest.mark.parametrize("text", ["sometimes", "throttle=1", "late=-1"])
def test_behaviour_rejects_unknown_modes_and_bad_delays(text):
    with pytest.raises(ValueError):
        Behaviour.parse(text)


def test_listener_port_refuses_after_stop(recorder):
    fake = FakeLambda(functions={"render": recorder}).start()
    host, port = fake.endpoint_url.removeprefix("http://").split(":")
    fake.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5)
