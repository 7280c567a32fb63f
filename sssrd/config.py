"""The daemon's settings: one frozen object built from defaults, a TOML file, env and flags.

Every setting is declared once, as a field of Settings carrying its Field (parser, default, help,
documentation, section, whether SIGHUP may change it); FIELDS lists them. That one table drives
the TOML keys, the `SSSRD_<NAME>` environment variables, the `--<name>` CLI flags, what a reload
applies, `sssrd check-config`, and the generated packaging/sssrd.toml and docs/settings.md
(tools/settings_docs.py), so none of them can drift apart. Precedence: flags > env > file >
defaults. A bad value raises ConfigError naming the key and where the value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = "/etc/sssrd/sssrd.toml"
ENV_PREFIX = "SSSRD_"
CONFIG_ENV = "SSSRD_CONFIG"  # names the file; the one SSSRD_ variable that is not a setting


class ConfigError(ValueError):
    """A setting is invalid; str() is a one-line message naming the key."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::", "")


def toml_literal(value: Any) -> str:
    """A value spelled as in TOML: for check-config's output and for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "a table"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def text(value: Any, expected: str) -> str:
    """A setting's value as text; TOML numbers, booleans and lists are refused, not stringified."""
    if not isinstance(value, str):
        raise ValueError(f"expected {expected}, got {toml_literal(value)}")
    return value.strip()


def parse_address(value: Any) -> Address:
    expected = "HOST:PORT such as 127.0.0.1:8080"
    address = text(value, expected)
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected {expected}, got {toml_literal(address)}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (0..65535)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(
                f"host must be an IP address or localhost, got {toml_literal(host)}"
            ) from None
    return Address(host, port)


def parse_optional_address(value: Any) -> Address | None:
    if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
        return None
    return parse_address(value)


def parse_positive_float(value: Any) -> float:
    expected = "a positive number of seconds"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {expected}, got {toml_literal(value)}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected {expected}, got {toml_literal(value)}") from None
    if not number > 0 or number == float("inf"):
        raise ValueError(f"expected {expected}, got {toml_literal(value)}")
    return number


def parse_whole_number(value: Any, expected: str) -> int:
    """A TOML integer, or decimal digits from the environment or a flag; never a fraction."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    raise ValueError(f"expected {expected}, got {toml_literal(value)}")


def parse_positive_int(value: Any) -> int:
    expected = "a positive whole number"
    number = parse_whole_number(value, expected)
    if number <= 0:
        raise ValueError(f"expected {expected}, got {number}")
    return number


def parse_choice(*choices: str) -> Callable[[Any], str]:
    expected = "one of " + ", ".join(toml_literal(choice) for choice in choices)

    def parse(value: Any) -> str:
        choice = text(value, expected).lower()
        if choice not in choices:
            raise ValueError(f"expected {expected}, got {toml_literal(value)}")
        return choice

    return parse


def parse_callback_url(value: Any) -> str:
    """An advertised callback base such as http://10.0.1.23:8081, or 'auto' (EC2), or ''."""
    expected = 'an http(s)://HOST[:PORT] URL or "auto"'
    url = text(value, expected).rstrip("/")
    if url in ("", "auto"):
        return url
    if not is_http_url(url):
        raise ValueError(f"expected {expected}, got {toml_literal(url)}")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"must not have a query or fragment, got {toml_literal(url)}")
    return url


def parse_optional_url(value: Any) -> str:
    expected = 'an http(s)://HOST[:PORT] URL or ""'
    url = text(value, expected).rstrip("/")
    if url and not is_http_url(url):
        raise ValueError(f"expected {expected}, got {toml_literal(url)}")
    return url


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        port = parts.port  # raises for a port that is not a number or is out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0


def parse_retries(value: Any) -> int:
    expected = "a whole number from 0 to 5"
    number = parse_whole_number(value, expected)
    if not 0 <= number <= 5:
        raise ValueError(f"expected {expected}, got {number}")
    return number


# Lambda's payload limits by invocation type: what `max_event_bytes = "auto"` follows.
EVENT_PAYLOAD_LIMITS = {"Event": 1_048_576, "RequestResponse": 6_291_456}
FOLLOWS_INVOCATION_TYPE = 0  # max_event_bytes "auto", until load_settings resolves it


def parse_event_limit(value: Any) -> int:
    """ "auto" (Lambda's limit for the invocation type) or a positive whole number."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return FOLLOWS_INVOCATION_TYPE
    return parse_positive_int(value)


def parse_invocation_type(value: Any) -> str:
    """The Invoke API's InvocationType, in AWS's spelling (any case accepted)."""
    by_lower = {name.lower(): name for name in EVENT_PAYLOAD_LIMITS}
    expected = "one of " + ", ".join(toml_literal(name) for name in EVENT_PAYLOAD_LIMITS)
    name = by_lower.get(text(value, expected).lower())
    if name is None:
        raise ValueError(f"expected {expected}, got {toml_literal(value)}")
    return name


def parse_networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs as a TOML list or a comma-separated string (for env and flags)."""
    expected = 'CIDRs such as "10.0.0.0/8", as a list or comma-separated'
    items = value if isinstance(value, list) else text(value, expected).split(",")
    networks = []
    for item in items:
        cidr = text(item, expected)
        if not cidr:
            continue
        try:
            networks.append(ipaddress.ip_network(cidr))
        except ValueError:
            raise ValueError(f"expected {expected}, got {toml_literal(cidr)}") from None
    return tuple(networks)


def parse_workers(value: Any) -> int:
    """ "auto" (one per CPU this process may run on) or a positive whole number."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    expected = 'a positive whole number or "auto"'
    number = parse_whole_number(value, expected)
    if number <= 0:
        raise ValueError(f"expected {expected}, got {number}")
    return number


def parse_handler(value: Any) -> str:
    expected = "module:function such as sssrd.demo:handler"
    spec = text(value, expected)
    module, sep, function = spec.partition(":")
    if not sep or not module or not function.isidentifier():
        raise ValueError(f"expected {expected}, got {toml_literal(spec)}")
    return spec


def parse_string(value: Any) -> str:
    return text(value, "text in quotes")


class Section(StrEnum):
    """Where a setting is shown in the shipped config and the reference, in this order."""

    LISTENERS = "Listeners"
    RENDERING = "Rendering"
    LAMBDA = "Lambda invoker"
    LIMITS = "Limits"
    TIMEOUTS = "Timeouts"
    TRAFFIC = "Body path, proxies and logging"


@dataclass(frozen=True, slots=True)
class Field:
    """One setting: how to parse it, its default, and the texts that document it."""

    name: str
    parse: Callable[[Any], Any]
    default: Any  # as a user would write it; parsed like any other layer
    help: str  # one line: `--help` and `sssrd check-config`
    doc: str  # Markdown: the shipped config's comment and docs/settings.md
    section: Section
    reloadable: bool  # SIGHUP changes it in place; the rest are built once at startup


def setting(
    parse: Callable[[Any], Any],
    default: Any,
    help: str,
    doc: str,
    *,
    section: Section,
    reloadable: bool = False,
) -> Any:
    """A Settings field that carries its own Field (named once the class exists)."""
    spec = {"parse": parse, "default": default, "help": help, "doc": doc, "section": section}
    return dataclasses.field(metadata={"setting": {**spec, "reloadable": reloadable}})


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective settings, one typed attribute each; the class body is the settings table.

    Each `= setting(...)` is a dataclasses.field holding that setting's Field, not a default
    value: every attribute is required, so build Settings with load_settings().
    """

    listen: Address = setting(
        parse_address,
        "0.0.0.0:8080",
        "viewer listener (the ALB target), HOST:PORT",
        "Viewer listener: the ALB's target. `GET /healthz` here is the ALB health check.",
        section=Section.LISTENERS,
    )
    callback_listen: Address = setting(
        parse_address,
        "0.0.0.0:8081",
        "callback listener, HOST:PORT",
        "Callback listener: where Lambdas POST their responses. Allow it only from the "
        "Lambda's security group.",
        section=Section.LISTENERS,
    )
    callback_url: str = setting(
        parse_callback_url,
        "",
        "callback base URL advertised to the Lambda; '' derives it from callback_listen "
        "(which must then name a specific address); 'auto' asks EC2's IMDSv2",
        "The callback base URL the Lambda is told to use; it must reach *this* instance, never "
        'the ALB. `""` derives it from `callback_listen`, which must then name a specific '
        'address; `"auto"` asks EC2\'s instance metadata (IMDSv2) for the private IPv4.',
        section=Section.LISTENERS,
    )
    admin_listen: Address | None = setting(
        parse_optional_address,
        "127.0.0.1:9090",
        "metrics/health; 'off'",
        'Admin listener: `/metrics` (Prometheus) and `/healthz`; `"off"` disables it.',
        section=Section.LISTENERS,
    )
    workers: int = setting(
        parse_workers,
        "auto",
        "worker processes; 'auto' = one per usable CPU, 1 = a single process",
        'Worker processes, each with its own event loop: `"auto"` runs one per CPU the daemon '
        "may use (`sched_getaffinity`), `1` a single process. With more than one, a supervisor "
        "holds the listeners: every worker accepts viewers on the one viewer socket, worker *i* "
        "owns the callback port `callback_listen` + *i* (and advertises it), and the admin "
        "listener serves the whole daemon's metrics. `max_pending` and `local_workers` apply "
        "per worker.",
        section=Section.LISTENERS,
    )
    backlog: int = setting(
        parse_positive_int,
        4096,
        "listen backlog of each listener",
        "Listen backlog of each listener; the kernel caps it at `net.core.somaxconn` (the usual "
        "511 overflowed under a 1,000-connection load).",
        section=Section.LISTENERS,
    )
    invoker: str = setting(
        parse_choice("local", "lambda"),
        "lambda",
        "how renders are started",
        'How renders start: `"lambda"` (an asynchronous Lambda invoke) or `"local"` (a '
        "Python handler run in-process on worker threads, for development).",
        section=Section.RENDERING,
    )
    handler: str = setting(
        parse_handler,
        "sssrd.demo:handler",
        "local invoker: module:function",
        "Local invoker: the handler, as `module:function`.",
        section=Section.RENDERING,
    )
    local_workers: int = setting(
        parse_positive_int,
        64,
        "local invoker: concurrent handler threads",
        "Local invoker: how many handlers run at once (more queue up).",
        section=Section.RENDERING,
    )
    compat: str = setting(
        parse_choice("", "lambda-streaming"),
        "",
        "'lambda-streaming' speaks the seed proof of concept's protocol (NO callback token)",
        '`"lambda-streaming"` speaks the original proof of concept\'s protocol: the event is '
        '`{"origin", "url", "requestId"}` and the callback a POST to the callback listener\'s '
        "root with `x-request-id` / `x-status-code`. It carries **no token**: leave it off "
        "unless you need it.",
        section=Section.RENDERING,
    )
    function: str = setting(
        parse_string,
        "",
        "lambda invoker: function name, partial or full ARN",
        "The render function: a name, partial or full ARN (required with the Lambda invoker). "
        "The instance role needs `lambda:InvokeFunction` on exactly that function (or alias) "
        "ARN.",
        section=Section.LAMBDA,
    )
    qualifier: str = setting(
        parse_string,
        "",
        "lambda invoker: alias or version ('' for unqualified)",
        'An alias or version of `function` (`""` for unqualified).',
        section=Section.LAMBDA,
    )
    region: str = setting(
        parse_string,
        "",
        "lambda invoker: AWS region ('' tries AWS_REGION, AWS_DEFAULT_REGION/profile, IMDSv2)",
        'The AWS region; `""` tries `AWS_REGION`, `AWS_DEFAULT_REGION` or the AWS profile, '
        "then the instance metadata (IMDSv2, see `imds_endpoint`). Credentials always come from "
        "boto3's chain (on EC2, the instance profile).",
        section=Section.LAMBDA,
    )
    endpoint_url: str = setting(
        parse_optional_url,
        "",
        "lambda invoker: Invoke API endpoint ('' uses boto3's, incl. AWS_ENDPOINT_URL_LAMBDA)",
        'The Invoke API endpoint; `""` uses boto3\'s (`AWS_ENDPOINT_URL_LAMBDA` works).',
        section=Section.LAMBDA,
    )
    invoke_client: str = setting(
        parse_choice("lean", "boto3"),
        "lean",
        "lambda invoker: 'lean' signs with sssrd's own SigV4 signer and sends on sssrd's own "
        "pooled HTTP client; 'boto3' calls boto3's invoke() on a thread pool",
        "`\"lean\"` signs each invoke with sssrd's own SigV4 signer (held to botocore's output) "
        "and sends it on sssrd's own keep-alive client (a quarter of boto3's CPU per invoke, "
        '`bench/RESULTS.md`); `"boto3"` calls boto3\'s `invoke()` on a thread pool.',
        section=Section.LAMBDA,
    )
    invocation_type: str = setting(
        parse_invocation_type,
        "Event",
        "lambda invoker: 'Event' (asynchronous) or 'RequestResponse' (the invoke stays open "
        "for the render's life, so its errors are answered at once)",
        '`"Event"`: asynchronous invokes (1 MB payload; a render that fails without an error '
        'report is noticed only at `callback_timeout`). `"RequestResponse"`: the invoke\'s '
        "exchange stays open while the render streams through its callback, so a render that "
        "raises, times out or returns without calling back is answered at once (502/504) and "
        "one that fails mid-stream is cut at once; 6 MB payload, no duplicate deliveries, one "
        "open connection to the Invoke API per render in flight (up to `max_pending`). Needs "
        '`invoke_client = "lean"`. See docs/operations.md.',
        section=Section.LAMBDA,
    )
    function_timeout: float = setting(
        parse_positive_float,
        900.0,
        "the render function's own timeout (RequestResponse waits this + invoke_timeout)",
        "The render function's own timeout, in seconds (Lambda's maximum by default). A "
        "RequestResponse invoke waits up to this plus `invoke_timeout` for the function's "
        "answer; the CDK app sets it from the function.",
        section=Section.LAMBDA,
    )
    invoke_timeout: float = setting(
        parse_positive_float,
        5.0,
        "seconds one invoke attempt may take",
        "One invoke attempt's time limit.",
        section=Section.LAMBDA,
    )
    invoke_retries: int = setting(
        parse_retries,
        1,
        "extra attempts after a connection failure or a 5xx (never after 429/4xx)",
        "Extra attempts (0 to 5) after a connection failure, a 5xx or an attempt over "
        "`invoke_timeout`; never after a throttle (429) or another 4xx.",
        section=Section.LAMBDA,
    )
    invoke_connections: int = setting(
        parse_positive_int,
        64,
        "lean invoke client: most connections open to the Invoke API",
        'Most connections open to the Invoke API (with `invoke_client = "boto3"`, its threads).',
        section=Section.LAMBDA,
    )
    imds_endpoint: str = setting(
        parse_optional_url,
        "",
        "EC2 instance metadata endpoint for callback_url 'auto' and the region ('' uses "
        "AWS_EC2_METADATA_SERVICE_ENDPOINT, else http://169.254.169.254)",
        'Where `callback_url = "auto"` asks for the instance\'s private IPv4, and an unset '
        '`region` for the instance\'s region; `""` uses `AWS_EC2_METADATA_SERVICE_ENDPOINT`, '
        "else `http://169.254.169.254`.",
        section=Section.LAMBDA,
    )
    max_pending: int = setting(
        parse_positive_int,
        10_000,
        "requests waiting or streaming; over: 503",
        "Requests waiting for or streaming a callback; more are shed with 503 at once, with no "
        "invoke.",
        section=Section.LIMITS,
        reloadable=True,
    )
    max_head_bytes: int = setting(
        parse_positive_int,
        16_384,
        "request head size limit; over: 431",
        "Request head size limit, on every listener (431 beyond).",
        section=Section.LIMITS,
        reloadable=True,
    )
    max_body_bytes: int = setting(
        parse_positive_int,
        1_048_576,
        "request body size limit; over: 413",
        "Request body size limit (413 beyond); at most `max_event_bytes`.",
        section=Section.LIMITS,
        reloadable=True,
    )
    max_event_bytes: int = setting(
        parse_event_limit,
        "auto",
        "invoke payload limit; over: 413 ('auto': 1 MB for Event, 6 MB for RequestResponse)",
        "The whole invoke payload's limit, after base64 (413 beyond, before any invoke). "
        '`"auto"` follows `invocation_type`: Lambda\'s limit is 1 MB (1,048,576 bytes) for '
        "asynchronous invokes and 6 MB (6,291,456) for synchronous ones.",
        section=Section.LIMITS,
        reloadable=True,
    )
    max_prelude_bytes: int = setting(
        parse_positive_int,
        65_536,
        "callback prelude size limit",
        "Largest JSON prelude a callback may send before its 8 NUL bytes.",
        section=Section.LIMITS,
        reloadable=True,
    )
    head_timeout: float = setting(
        parse_positive_float,
        10.0,
        "seconds to receive a whole request head, and then its body",
        "On both listeners a request head must arrive whole within this (of the connection's "
        "start, or of its first byte on a kept connection), and a viewer's body within this of "
        "its head (slowloris guard; 408 otherwise).",
        section=Section.TIMEOUTS,
        reloadable=True,
    )
    callback_timeout: float = setting(
        parse_positive_float,
        30.0,
        "seconds from request to callback",
        "The Lambda must call back within this of the request (504 otherwise).",
        section=Section.TIMEOUTS,
        reloadable=True,
    )
    idle_timeout: float = setting(
        parse_positive_float,
        30.0,
        "longest gap between callback body bytes",
        "Longest silence between callback body bytes before the stream is cut. Only the "
        "Lambda's silence counts: time spent waiting for a slow viewer to take bytes does not.",
        section=Section.TIMEOUTS,
        reloadable=True,
    )
    send_timeout: float = setting(
        parse_positive_float,
        60.0,
        "longest a viewer may take no response byte",
        "Longest a viewer may take none of the response's bytes before it is cut as a viewer "
        "abort; the Lambda's callback is then told 410 and closed, so the render stops.",
        section=Section.TIMEOUTS,
        reloadable=True,
    )
    keepalive_timeout: float = setting(
        parse_positive_float,
        75.0,
        "idle kept connection lifetime; keep above the ALB's idle timeout (60 s)",
        "Kept-alive connections (viewer, and callback after a delivered callback) that stay "
        "idle between requests this long close. Keep it above the ALB's idle timeout (60 s by "
        "default) so the ALB never reuses a connection sssrd is closing.",
        section=Section.TIMEOUTS,
        reloadable=True,
    )
    drain_timeout: float = setting(
        parse_positive_float,
        30.0,
        "seconds in-flight streams get on SIGTERM",
        "On SIGTERM, in-flight streams get this long to finish (keep the unit's "
        "`TimeoutStopSec` above it).",
        section=Section.TIMEOUTS,
        reloadable=True,
    )
    body_path: str = setting(
        parse_choice("auto", "splice", "copy"),
        "auto",
        "how body bytes move: 'auto' splices large chunks and copies small ones; "
        "'splice'/'copy' force one (benchmarks, debugging)",
        'How body bytes move from callback to viewer: `"auto"` moves large chunks with '
        "`splice(2)` (no copy through Python) and copies small ones (cheaper for them); "
        '`"splice"` or `"copy"` force one path.',
        section=Section.TRAFFIC,
        reloadable=True,
    )
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        parse_networks,
        "",
        "CIDRs whose X-Forwarded-For is believed (the ALB's subnets; CloudFront's ranges if "
        "the viewer's own address matters); the client address is then the last untrusted hop",
        "CIDRs whose `X-Forwarded-For` is believed, as a list or a comma-separated string: the "
        "ALB's subnets (and CloudFront's ranges if the viewer's own address matters). The "
        "client address in logs and in the event's `sourceIp` is then the last untrusted hop.",
        section=Section.TRAFFIC,
        reloadable=True,
    )
    log_level: str = setting(
        parse_choice("debug", "info", "warning", "error"),
        "info",
        "lowest level of lifecycle/error log lines (access lines are always written)",
        "Lowest level of lifecycle and error lines: `debug`, `info`, `warning`, `error`. "
        "Access lines (one JSON line per request) are always written.",
        section=Section.TRAFFIC,
        reloadable=True,
    )

    def as_toml(self) -> str:
        """The effective settings as TOML, each key with its help text."""
        lines = []
        for field in FIELDS:
            value = getattr(self, field.name)
            if value is None:
                shown = "off"
            elif isinstance(value, tuple):
                shown = ",".join(str(item) for item in value)
            else:
                shown = str(value) if isinstance(value, Address) else value
            lines.append(f"# {field.help}")
            lines.append(f"{field.name} = {toml_literal(shown)}")
        return "\n".join(lines) + "\n"


FIELDS: tuple[Field, ...] = tuple(
    Field(name=field.name, **field.metadata["setting"]) for field in dataclasses.fields(Settings)
)
FIELDS_BY_NAME = {field.name: field for field in FIELDS}


def read_toml(path: str) -> dict[str, Any]:
    """The file's settings; every way it can be unreadable is a one-line ConfigError."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise ConfigError(
            f"config file {path}: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    for key in sorted(data):
        if key not in FIELDS_BY_NAME:
            raise ConfigError(f"{key}: unknown setting{did_you_mean(key, '')} (in {path})")
    return data


def read_env(environ: Mapping[str, str]) -> dict[str, str]:
    """SSSRD_<NAME> values of settings; other SSSRD_ names are left to unknown_env's warnings."""
    values = {}
    for key, value in environ.items():
        name = key[len(ENV_PREFIX) :].lower()
        if key.startswith(ENV_PREFIX) and name in FIELDS_BY_NAME:
            values[name] = value
    return values


# What Kubernetes injects for a Service named sssrd (service links, on by default).
SERVICE_LINK = re.compile(
    ENV_PREFIX
    + r"(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)"
)


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """A warning for each SSSRD_ variable that names no setting: a typo (with a guess), or
    someone else's (Kubernetes service links, wrappers using the prefix). Never a refusal: a
    daemon must start in a namespace that happens to hold a Service named sssrd."""
    warnings = []
    for key in sorted(environ):
        name = key[len(ENV_PREFIX) :].lower()
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV or name in FIELDS_BY_NAME:
            continue
        if SERVICE_LINK.fullmatch(key):
            hint = "; a Kubernetes service link?"
        else:
            hint = did_you_mean(name, ENV_PREFIX)
        warnings.append(f"{key}: not a setting, ignored{hint} (environment variable)")
    return warnings


def did_you_mean(name: str, prefix: str) -> str:
    close = difflib.get_close_matches(name.lower(), FIELDS_BY_NAME, n=1)
    return f"; did you mean {prefix}{close[0].upper() if prefix else close[0]}?" if close else ""


def load_settings(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the layers (later wins) and validate each value once, naming its source on error."""
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("default", {f.name: f.default for f in FIELDS}),
        ("command default", defaults or {}),
    ]
    if path is not None:
        layers.append((f"file {path}", read_toml(path)))
    layers.append(("environment", read_env(os.environ if environ is None else environ)))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))

    raw: dict[str, tuple[Any, str]] = {}
    for source, layer in layers:
        for name, value in layer.items():
            raw[name] = (value, source)
    values = {}
    for field in FIELDS:
        value, source = raw[field.name]
        try:
            values[field.name] = field.parse(value)
        except (TypeError, ValueError) as exc:
            origin = {
                "environment": f"{ENV_PREFIX}{field.name.upper()}",
                "flag": "--" + field.name.replace("_", "-"),
            }.get(source, source)
            raise ConfigError(f"{field.name}: {exc} (from {origin})") from None
    if values["max_event_bytes"] == FOLLOWS_INVOCATION_TYPE:
        values["max_event_bytes"] = EVENT_PAYLOAD_LIMITS[values["invocation_type"]]
    settings = Settings(**values)
    check_consistency(settings)
    return settings


def settings_from_toml(text: str) -> Settings:
    """Settings from `as_toml()` text alone (no file, env or flags): how a supervisor hands
    the settings it validated to its workers."""
    return load_settings(environ={}, flags=tomllib.loads(text))


def check_consistency(settings: Settings) -> None:
    """Rules that span settings; each error still names the key to change."""
    if not settings.callback_url and settings.callback_listen.is_wildcard:
        raise ConfigError(
            "callback_url: required when callback_listen is a wildcard address "
            f'({settings.callback_listen}); set the address the Lambda can reach, or "auto" on EC2'
        )
    if settings.invoker == "lambda" and not settings.function:
        raise ConfigError('function: required with invoker = "lambda" (a name or ARN)')
    if settings.invocation_type == "RequestResponse" and (
        settings.invoker == "lambda" and settings.invoke_client == "boto3"
    ):
        raise ConfigError(
            'invocation_type: "RequestResponse" needs invoke_client = "lean" (boto3 would hold '
            "a thread for each render in flight)"
        )
    if settings.max_body_bytes > settings.max_event_bytes:
        raise ConfigError(
            f"max_body_bytes: {settings.max_body_bytes} exceeds max_event_bytes "
            f"({settings.max_event_bytes}); such a body could never be invoked"
        )


def merge_reload(current: Settings, loaded: Settings) -> tuple[Settings, list[str], list[str]]:
    """The settings to run with after a reload, the names changed, and those needing a restart."""
    changed = [f.name for f in FIELDS if getattr(current, f.name) != getattr(loaded, f.name)]
    applied = [name for name in changed if FIELDS_BY_NAME[name].reloadable]
    refused = [name for name in changed if not FIELDS_BY_NAME[name].reloadable]
    merged = dataclasses.replace(current, **{name: getattr(loaded, name) for name in applied})
    return merged, applied, refused
