"""The Lambda invokers against the fake Invoke API over real HTTP, and instance discovery.

The daemon runs as a subprocess with `--invoker lambda`; boto3/botocore in it talk to a
FakeLambda in this process, which checks every SigV4 signature and runs the scenario handlers
(which call back into the daemon). Both invoke clients must pass the same tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT, Daemon, Viewer, daemon, header, http_get
from test_lifecycle import sssrd_command

from sssrd.testing.fake_imds import FakeIMDS
from sssrd.testing.fake_lambda import FakeLambda

pytestmark = pytest.mark.daemon

CLIENTS = ["lean", "boto3"]


@pytest.fixture(scope="module")
def fake(conductor) -> Iterator[FakeLambda]:
    os.environ["SCENARIO_CONDUCTOR"] = conductor.address  # the handlers run in this process
    with FakeLambda(functions={"render": "scenarios:handler"}) as running:
        yield running
    del os.environ["SCENARIO_CONDUCTOR"]


@pytest.fixture(autouse=True)
def normal_behaviour(fake: FakeLambda) -> None:
    fake.reset_behaviour()


def lambda_daemon(conductor, fake: FakeLambda, client: str, *args: str, **env: str):
    return daemon(
        conductor,
        "--invoker=lambda",
        "--function=render",
        f"--invoke-client={client}",
        *args,
        **{**fake.env(), **env},
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_signed_event_invoke_reaches_the_lambda_and_streams_back(conductor, fake, client):
    with lambda_daemon(conductor, fake, client) as sssrd:
        head, body = Viewer(sssrd.viewer).get(f"/page?scenario=echo&tag=ok-{client}")
        assert head.status_code == 200
        event = json.loads(body)
        assert event["rawPath"] == "/page"
        invocation = fake.invocations[-1]
        assert invocation.invocation_type == "Event"
        assert invocation.function_name == "render" and invocation.qualifier is None
        assert invocation.event["sssrd"]["callbackUrl"] == event["sssrd"]["callbackUrl"]
        access = sssrd.access(request_id=header(head, b"x-request-id").decode())
        assert access["invoke_ms"] > 0


@pytest.mark.parametrize("client", CLIENTS)
def test_qualifier_and_arn_are_sent_as_configured(conductor, fake, client):
    arn = fake.function_arn("render")
    with lambda_daemon(conductor, fake, client, f"--function={arn}", "--qualifier=live") as sssrd:
        head, _ = Viewer(sssrd.viewer).get("/?scenario=echo")
        assert head.status_code == 200
        invocation = fake.invocations[-1]
        assert (invocation.function_name, invocation.qualifier) == ("render", "live")


@pytest.mark.parametrize("client", CLIENTS)
def test_endpoint_flag_works_without_the_environment_variable(conductor, fake, client):
    env = fake.env()
    endpoint = env.pop("AWS_ENDPOINT_URL_LAMBDA")
    with daemon(
        conductor,
        "--invoker=lambda",
        "--function=render",
        f"--invoke-client={client}",
        f"--endpoint-url={endpoint}",
        **env,
        AWS_ENDPOINT_URL_LAMBDA="",
    ) as sssrd:
        assert Viewer(sssrd.viewer).get("/?scenario=echo")[0].status_code == 200


@pytest.mark.parametrize("client", CLIENTS)
def test_throttle_gives_503_with_retry_after_and_is_not_retried(conductor, fake, client):
    with lambda_daemon(conductor, fake, client) as sssrd:
        fake.set_behaviour("throttle")
        before = len(fake.invocations)
        status, headers, _ = http_get(sssrd.viewer, "/?scenario=echo")
        assert status == 503 and headers["retry-after"] == "1"
        assert len(fake.invocations) == before + 1
        access = sssrd.access(path="/")
        assert access["outcome"] == "invoke_throttled"
        assert "TooManyRequestsException" in access["error"]
        assert sssrd.metric("sssrd_pending_callbacks") == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_server_error_is_retried_once_then_gives_502(conductor, fake, client):
    with lambda_daemon(conductor, fake, client) as sssrd:
        fake.set_behaviour("error")
        before = len(fake.invocations)
        status, _, body = http_get(sssrd.viewer, "/?scenario=echo")
        assert status == 502
        assert b"ServiceException" not in body  # AWS details stay in the log
        assert len(fake.invocations) == before + 2
        assert sssrd.access(path="/")["outcome"] == "invoke_failed"


@pytest.mark.parametrize("client", CLIENTS)
def test_one_server_error_then_success_streams_normally(conductor, fake, client):
    with lambda_daemon(conductor, fake, client) as sssrd:
        fake.set_behaviour("error", times=1)
        assert Viewer(sssrd.viewer).get("/?scenario=echo")[0].status_code == 200


@pytest.mark.parametrize("client", CLIENTS)
def test_hanging_invoke_times_out_with_502_and_frees_the_entry(conductor, fake, client):
    with lambda_daemon(
        conductor, fake, client, "--invoke-timeout=0.3", "--invoke-retries=0"
    ) as sssrd:
        fake.set_behaviour("hang")
        assert http_get(sssrd.viewer, "/?scenario=echo")[0] == 502
        assert sssrd.metric("sssrd_pending_callbacks") == 0
        fake.reset_behaviour()
        assert Viewer(sssrd.viewer).get("/?scenario=echo")[0].status_code == 200


@pytest.mark.parametrize("client", CLIENTS)
def test_bad_credentials_give_502_without_retry(conductor, fake, client):
    with lambda_daemon(conductor, fake, client, AWS_SECRET_ACCESS_KEY="wrong") as sssrd:
        before = len(fake.invocations)
        assert http_get(sssrd.viewer, "/?scenario=echo")[0] == 502
        assert len(fake.invocations) == before  # refused before it counted as an invoke
        assert "InvalidSignatureException" in sssrd.access(path="/")["error"]


@pytest.mark.parametrize("client", CLIENTS)
def test_unreachable_endpoint_gives_502(conductor, fake, client):
    with lambda_daemon(
        conductor, fake, client, "--endpoint-url=http://127.0.0.1:9", AWS_ENDPOINT_URL_LAMBDA=""
    ) as sssrd:
        assert http_get(sssrd.viewer, "/?scenario=echo")[0] == 502


@pytest.mark.parametrize("client", CLIENTS)
def test_event_delivered_twice_streams_once_and_the_second_callback_is_refused(
    conductor, fake, client
):
    with lambda_daemon(conductor, fake, client) as sssrd:
        fake.set_behaviour("twice")
        conductor.release(f"twice-{client}:go")
        head, body = Viewer(sssrd.viewer).get(f"/?scenario=late&tag=twice-{client}")
        assert head.status_code == 200
        assert body == b"too late"
        fake.wait_for_handler_runs(2)
        rejected = conductor.report(f"twice-{client}", "rejected")
        assert "409" in rejected["message"] or "410" in rejected["message"]


def region_line(sssrd) -> dict:
    return sssrd.wait_line(lambda line: line.get("message") == "AWS region")


NO_REGION = {"AWS_DEFAULT_REGION": "", "AWS_REGION": "", "AWS_CONFIG_FILE": "/nonexistent"}


@pytest.mark.parametrize("client", CLIENTS)
def test_aws_region_alone_is_enough(conductor, fake, client):
    """AWS_REGION is what Lambda, ECS and CodeBuild set; botocore alone reads only the other.

    It also wins over AWS_DEFAULT_REGION: the fake accepts only signatures for its own region.
    """
    env = {**NO_REGION, "AWS_REGION": fake.region, "AWS_DEFAULT_REGION": "eu-west-8"}
    with lambda_daemon(conductor, fake, client, **env) as sssrd:
        assert Viewer(sssrd.viewer).get("/?scenario=echo")[0].status_code == 200
        assert region_line(sssrd)["region"] == fake.region
        assert region_line(sssrd)["source"] == "AWS_REGION"


@pytest.mark.parametrize(
    ("args", "env", "source"),
    [
        (
            "--region=us-east-1",
            {"AWS_REGION": "eu-west-9", "AWS_DEFAULT_REGION": "eu-west-8"},
            "the region setting",
        ),
        ("", {"AWS_DEFAULT_REGION": "us-east-1"}, "AWS_DEFAULT_REGION"),
        ("", {"AWS_CONFIG_FILE": "PROFILE"}, "the AWS profile"),
    ],
    ids=["setting", "AWS_DEFAULT_REGION", "profile"],
)
def test_region_sources_in_order(conductor, fake, tmp_path, args, env, source):
    """Each source beats the later ones; the fake accepts only signatures for us-east-1."""
    profile = tmp_path / "config"
    profile.write_text("[default]\nregion = us-east-1\n")
    env = {**NO_REGION, **{k: str(profile) if v == "PROFILE" else v for k, v in env.items()}}
    with lambda_daemon(conductor, fake, "lean", *filter(None, [args]), **env) as sssrd:
        assert Viewer(sssrd.viewer).get("/?scenario=echo")[0].status_code == 200
        assert (region_line(sssrd)["region"], region_line(sssrd)["source"]) == ("us-east-1", source)


def test_region_comes_from_imds_when_nothing_names_one(conductor, fake):
    with FakeIMDS(region=fake.region) as imds:
        with lambda_daemon(
            conductor,
            fake,
            "lean",
            f"--imds-endpoint={imds.endpoint}",
            **NO_REGION,
            AWS_EC2_METADATA_DISABLED="false",
        ) as sssrd:
            assert Viewer(sssrd.viewer).get("/?scenario=echo")[0].status_code == 200
            line = region_line(sssrd)
        asked = [(r.method, r.path, r.had_token) for r in imds.requests]
    assert line["region"] == fake.region
    assert line["source"] == f"instance metadata at {imds.endpoint.rstrip('/')}"
    assert asked == [
        ("PUT", "/latest/api/token", False),
        ("GET", "/latest/meta-data/placement/region", True),
    ]


def serve_lambda(fake: FakeLambda, *args: str, **env: str):
    """`sssrd serve` with the lambda invoker, expected to stop at startup."""
    return sssrd_command(
        "serve",
        "--listen=127.0.0.1:0",
        "--callback-listen=127.0.0.1:0",
        "--admin-listen=off",
        "--invoker=lambda",
        *args,
        env={**fake.env(), **env},
    )


@pytest.mark.parametrize(
    ("args", "env", "starts"),
    [
        (
            ["--function=render"],
            {
                **NO_REGION,
                "AWS_EC2_METADATA_DISABLED": "false",
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
            },
            "region: none found: set region, AWS_REGION or AWS_DEFAULT_REGION (or a profile's "
            "region), or run on EC2: cannot reach the instance metadata service at http://127.0.0.1:9",
        ),
        (["--function=render"], {"AWS_REGION": "Mars 1"}, 'region: "Mars 1" (from AWS_REGION)'),
        (
            ["--function=render"],
            {"AWS_PROFILE": "nobody"},
            "AWS_PROFILE: The config profile (nobody) could not be found",
        ),
        (
            ["--function=render"],
            {
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent",
            },
            "AWS credentials: none found",
        ),
        (["--function=render"], {"AWS_SECRET_ACCESS_KEY": ""}, "AWS credentials: "),
        (
            ["--function=render"],
            {"AWS_ENDPOINT_URL_LAMBDA": "garbage"},
            "AWS_ENDPOINT_URL_LAMBDA: unusable Invoke API endpoint",
        ),
        (
            ["--function=render"],
            {"AWS_ENDPOINT_URL_LAMBDA": "http://127.0.0.1:port"},
            'AWS_ENDPOINT_URL_LAMBDA: "http://127.0.0.1:port" is not an http(s)://HOST[:PORT] URL',
        ),
        (
            ["--function=arn:aws:lambda:x"],
            {},
            'function: "arn:aws:lambda:x" is not a function name',
        ),
        (
            ["--function=arn:aws:lambda:eu-west-1:123456789012:function:render"],
            {},
            "function: the ARN is in eu-west-1 but the region is us-east-1",
        ),
    ],
    ids=[
        "no-region",
        "bad-region",
        "no-profile",
        "no-credentials",
        "half-credentials",
        "endpoint-garbage",
        "endpoint-port",
        "bad-arn",
        "arn-in-another-region",
    ],
)
def test_invoker_startup_failure_is_one_line_naming_the_setting(fake, args, env, starts):
    result = serve_lambda(fake, *args, **env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"sssrd: cannot start: {starts}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_callback_url_auto_advertises_the_address_imds_gives(conductor):
    # A loopback address stands in for the private IPv4: nothing here may reach 10.x.
    with (
        FakeIMDS(local_ipv4="127.0.0.9") as imds,
        daemon(conductor, "--callback-url=auto", f"--imds-endpoint={imds.endpoint}") as sssrd,
    ):
        assert sssrd.callback_url == f"http://127.0.0.9:{sssrd.callback[1]}"


def test_callback_url_auto_renders_end_to_end(conductor):
    with (
        FakeIMDS(local_ipv4="127.0.0.1") as imds,
        daemon(conductor, "--callback-url=auto", f"--imds-endpoint={imds.endpoint}") as sssrd,
    ):
        event = json.loads(Viewer(sssrd.viewer).get("/?scenario=echo&tag=auto")[1])
        assert event["sssrd"]["callbackUrl"].startswith(sssrd.callback_url + "/v1/callback/")


@pytest.mark.parametrize("processes", [1, 2], ids=["1worker", "2workers"])
@pytest.mark.parametrize("mode", ["no_ipv4", "down"])
def test_callback_url_auto_fails_startup_when_imds_cannot_tell(mode, processes):
    """Under a supervisor the worker that cannot start says why: the same one line."""
    with FakeIMDS(local_ipv4="127.0.0.1") as imds:
        imds.set_mode(mode)
        sssrd = Daemon(
            None,
            f"--workers={processes}",
            "--callback-url=auto",
            f"--imds-endpoint={imds.endpoint}",
            ready=False,
        )
        code = sssrd.wait_exit()
    stderr = sssrd.stop_now()
    assert code == 1, stderr
    assert stderr.startswith("sssrd: cannot start: "), stderr
    assert "instance metadata" in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert sssrd.workers_left() == []


def test_compat_mode_speaks_the_seed_protocol(conductor):
    with daemon(conductor, "--compat=lambda-streaming") as sssrd:
        viewer = Viewer(sssrd.viewer)
        head, body = viewer.get("/seed/page?x=1", headers=[("x-forwarded-proto", "https")])
        assert head.status_code == 203
        assert body == b"seed one seed two "
        assert header(head, b"x-request-id") is None  # the id is the capability here
        assert header(head, b"content-type") == b"text/html"
        reported = conductor.report("seed", "event")
        assert set(reported["event"]) == {"origin", "url", "requestId"}
        assert reported["event"]["origin"] == sssrd.callback_url
        assert reported["event"]["url"] == "https://sssrd.test/seed/page?x=1"
        assert reported["status"] == 200


def test_example_lambda_zip_works_unchanged_under_the_fake(conductor, tmp_path, monkeypatch):
    """The deployable zip (handler + vendored helper, stdlib only) renders through sssrd."""
    built = subprocess.run(
        [str(ROOT / "examples" / "lambda" / "build.sh"), str(tmp_path / "render.zip")],
        capture_output=True,
        text=True,
        check=True,
    )
    with zipfile.ZipFile(built.stdout.strip()) as archive:
        assert sorted(archive.namelist()) == ["handler.py", "sssrd_callback.py"]
        archive.extractall(tmp_path / "function")
    monkeypatch.syspath_prepend(str(tmp_path / "function"))
    monkeypatch.setenv("EXAMPLE_DELAY_MS", "0")
    with (
        FakeLambda(functions={"example": "handler:handler"}) as fake,
        lambda_daemon(conductor, fake, "lean", "--function=example") as sssrd,
    ):
        head, body = Viewer(sssrd.viewer).get("/hello")
        assert head.status_code == 200
        assert body.count(b"streamed as it was rendered") == 5
        assert b"<code>/hello</code>" in body and body.endswith(b"</html>")
        fake.wait_for_handler_runs(1)
        assert fake.handler_failures == []


def test_example_build_writes_where_the_docs_say(tmp_path):
    """Run in a copy of the tree, so the default output lands outside the work tree."""
    shutil.copytree(ROOT / "examples" / "lambda", tmp_path / "examples" / "lambda")
    shutil.copytree(ROOT / "sssrd" / "callback", tmp_path / "sssrd" / "callback")
    built = subprocess.run(
        [str(tmp_path / "examples" / "lambda" / "build.sh")],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    written = Path(built.stdout.strip()).relative_to(tmp_path)
    assert (tmp_path / written).is_file()
    assert (
        f"`examples/lambda/build.sh` makes `{written}`"
        in (ROOT / "docs" / "operations.md").read_text()
    )
