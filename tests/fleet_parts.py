"""The fleet's parts: namespaces on a bridge, processes that die with the run, the render Lambda,
an sssrd instance and HAProxy as the ALB (tests/fleet.py puts them together).

Every name carries this process's pid (namespaces `sssrd-fleet-<pid>-<role>`, links `sfb<pid>`
and `sfv<pid>n<k>`), so runs never collide and `sweep_leftovers` can remove what a killed run
left. Every process is started through `setpriv --pdeathsig KILL` in its own process group: it
dies with this process, and a whole instance (supervisor and workers) is signalled at once.
Namespaces are tests/nspawn.py's NetworkNamespace, joined to the bridge by a veth pair each.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nspawn import NetworkNamespace, wait_until

from sssrd.testing import fake_lambda
from sssrd.testing.fake_imds import FakeIMDS

ROOT = Path(__file__).resolve().parent.parent
LAMBDA_PORT = 9001
VIEWER_PORT = 8080
CALLBACK_PORT = 8081
ADMIN_PORT = 9090
NAMESPACE_PREFIX = "sssrd-fleet-"
LINK_PATTERN = re.compile(r"^sf[bv](\d+)")
NAMESPACE_PATTERN = re.compile(rf"^{NAMESPACE_PREFIX}(\d+)-")
ALB_CONNECT_TIMEOUT_S = 10  # the ALB's own, not configurable
BOOT_TIMEOUT_S = 30


@dataclass(frozen=True)
class AlbTimings:
    """The ALB's target-group timings for this run, and the factor they were scaled by."""

    deregistration_delay_s: float
    health_interval_s: float
    health_timeout_s: float
    healthy_threshold: int
    unhealthy_threshold: int
    idle_timeout_s: int
    scale: float


# -- processes and namespaces ----------------------------------------------------------------------


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start argv in its own process group; it gets SIGKILL when this process dies."""
    with log.open("ab") as out:
        return subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout`; reap."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers left behind by a killed supervisor
    process.wait(timeout)


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> list[str]:
    """Delete namespaces and links of fleet runs whose process is gone; returns their names."""
    swept = []
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        found = NAMESPACE_PATTERN.match(name)
        if found and not alive(int(found[1])):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
            swept.append(name)
    for line in run("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        found = LINK_PATTERN.match(name)
        if found and not alive(int(found[1])):
            subprocess.run(["ip", "link", "delete", name], capture_output=True, timeout=30)
            swept.append(name)
    return swept


@dataclass(frozen=True)
class Node:
    """A network namespace on the fleet's bridge, with one address."""

    namespace: NetworkNamespace
    address: str

    def command(self, *argv: str) -> list[str]:
        return self.namespace.command(*argv)

    def socket_queues(self) -> list[tuple[int, int, str, str]]:
        """(Recv-Q, Send-Q, local, peer) of every established TCP socket in the namespace."""
        rows = []
        for line in run(*self.command("ss", "-Htn", "state", "established")).splitlines():
            fields = line.split()
            rows.append((int(fields[0]), int(fields[1]), fields[2], fields[3]))
        return rows


class Network:
    """A bridge with the host at .1 and a namespace per node; close() removes every piece."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.tag = str(pid)
        self.prefix = f"10.{64 + (pid >> 8) % 128}.{pid & 255}"
        self.bridge = f"sfb{pid}"
        self.host_address = f"{self.prefix}.1"
        self.nodes: list[Node] = []
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "address", "add", f"{self.host_address}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def node(self, role: str, host_number: int) -> Node:
        """A new namespace (tests/nspawn.py's) on the bridge at .host_number, eth0 up."""
        namespace = NetworkNamespace(f"{NAMESPACE_PREFIX}{self.tag}-{role}").__enter__()
        node = Node(namespace, f"{self.prefix}.{host_number}")
        self.nodes.append(node)
        veth = f"sfv{self.tag}n{host_number}"
        peer = ("peer", "name", "eth0", "netns", namespace.name)
        run("ip", "link", "add", veth, "type", "veth", *peer)
        run("ip", "link", "set", veth, "master", self.bridge, "up")
        namespace.ip("address", "add", f"{node.address}/24", "dev", "eth0")
        namespace.ip("link", "set", "eth0", "up")
        return node

    def close(self) -> None:
        for node in self.nodes:  # deleting a namespace deletes its veth pair
            node.namespace.close()
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_bytes().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))
    return lines


# -- the parts ------------------------------------------------------------------------------------


class RenderLambda:
    """The fake Invoke API in a namespace of its own, running tests/fleet_lambda.py."""

    def __init__(self, node: Node, workdir: Path, instance_ips: list[str]) -> None:
        self.node = node
        self.probe_log = workdir / "probes.jsonl"
        self.probe_log.touch()
        self.log = workdir / "lambda.log"
        listen = f"{node.address}:{LAMBDA_PORT}"
        argv = [sys.executable, "-m", "sssrd.testing.fake_lambda", "--listen", listen]
        argv += ["--handler", "fleet_lambda:handler", "--workers", "2000"]
        env = {
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
            "FLEET_INSTANCE_IPS": ",".join(instance_ips),
            "FLEET_PROBE_LOG": str(self.probe_log),
        }
        self.process = spawn(node.command(*argv), self.log, env)
        wait_until(lambda: b"export" in self.log.read_bytes(), "the fake Lambda", BOOT_TIMEOUT_S)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.node.address}:{LAMBDA_PORT}"

    def probes(self) -> list[dict[str, Any]]:
        return log_lines(self.probe_log)


class Instance:
    """One sssrd daemon (a supervisor and its workers) in its namespace, with its own IMDS."""

    def __init__(
        self, name: str, node: Node, network: Network, workdir: Path, flags: dict[str, Any]
    ) -> None:
        self.name = name
        self.node = node
        self.log = workdir / f"{name}.log"
        self.imds = FakeIMDS(node.address, instance_id=f"i-fleet{name}", host=network.host_address)
        self.flags = flags  # the settings every instance shares, as config keys
        self.process: subprocess.Popen | None = None
        self.launched_at = 0.0
        self.listening_at = 0.0

    def launch(self, lambda_url: str) -> None:
        """Start the daemon (the instance boots); returns at once, as an ASG launch does."""
        self.imds.start()
        flags = {
            **self.flags,
            "listen": f"0.0.0.0:{VIEWER_PORT}",
            "callback_listen": f"0.0.0.0:{CALLBACK_PORT}",
            "admin_listen": f"0.0.0.0:{ADMIN_PORT}",
            "imds_endpoint": self.imds.endpoint,
        }
        argv = [sys.executable, "-m", "sssrd.cli", "serve"]
        argv += [f"--{key.replace('_', '-')}={value}" for key, value in flags.items()]
        env = {
            "AWS_ACCESS_KEY_ID": fake_lambda.DEFAULT_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": fake_lambda.DEFAULT_SECRET_KEY,
            "AWS_ENDPOINT_URL_LAMBDA": lambda_url,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSSRD_")} | env
        self.launched_at = time.monotonic()
        self.process = spawn(self.node.command(*argv), self.log, env)

    def wait_listening(self) -> dict[str, Any]:
        def listening() -> dict[str, Any] | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            found = [x for x in log_lines(self.log) if x.get("message") == "sssrd listening"]
            return found[0] if found else None

        line = wait_until(listening, f"{self.name} to listen", BOOT_TIMEOUT_S)
        self.listening_at = time.monotonic()
        return line

    def metrics(self) -> dict[str, float]:
        """The unlabelled samples of the daemon's /metrics (its admin listener)."""
        connection = http.client.HTTPConnection(self.node.address, ADMIN_PORT, timeout=5)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        samples = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if line and not line.startswith("#") and "{" not in name:
                samples[name] = float(value)
        return samples

    def close(self) -> None:
        if self.process is not None:
            stop(self.process)
        self.imds.stop()


class Alb:
    """HAProxy as the ALB: least outstanding requests, /healthz checks, a runtime API socket."""

    BACKEND = "instances"

    def __init__(
        self, workdir: Path, instances: list[Instance], timings: AlbTimings, registered: int
    ) -> None:
        self.socket_path = workdir / "alb.sock"
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.listener.getsockname()[1]
        servers = "\n".join(
            f"    server {x.name} {x.node.address}:{VIEWER_PORT} check"
            + ("" if number < registered else " disabled")
            for number, x in enumerate(instances)
        )
        config = workdir / "alb.cfg"
        config.write_text(
            ALB_CONFIG.format(
                fd=self.listener.fileno(),
                socket=self.socket_path,
                idle=timings.idle_timeout_s,
                connect=ALB_CONNECT_TIMEOUT_S,
                interval_ms=round(timings.health_interval_s * 1000),
                timeout_ms=round(timings.health_timeout_s * 1000),
                rise=timings.healthy_threshold,
                fall=timings.unhealthy_threshold,
                servers=servers,
            )
        )
        self.log = workdir / "alb.log"  # HAProxy's own lines, and one httplog line a request
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "haproxy", "-db", "-f", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(self.listener.fileno(),),
                start_new_session=True,
            )
        wait_until(self.socket_path.exists, "the ALB's runtime API", BOOT_TIMEOUT_S)

    def command(self, text: str) -> str:
        """One command on HAProxy's runtime API (the stats socket)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(text.encode() + b"\n")
            answer = b""
            while piece := sock.recv(65536):
                answer += piece
        return answer.decode()

    def set_state(self, server: str, state: str) -> None:
        answer = self.command(f"set server {self.BACKEND}/{server} state {state}")
        if answer.strip():
            raise RuntimeError(f"ALB refused state {state} for {server}: {answer}")

    def register(self, server: str) -> None:
        """Bring a server out of maintenance as an ALB registers a target: "initial", no
        traffic until `rise` checks pass. HAProxy would trust it at once (UP 1/2) and ignores
        `health down` in maintenance, so the server passes through drain (no new requests)
        to have its check state forced down first."""
        self.set_state(server, "drain")
        self.command(f"set server {self.BACKEND}/{server} health down")
        self.set_state(server, "ready")

    def endings(self, server: str) -> dict[str, int]:
        """How the requests sent to `server` ended, by HAProxy's two-letter termination state
        (`--` normal, `SD` the server closed mid-response, `SH` before the response head, `SC`
        connection refused), from the request log."""
        counts: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            # client [date] frontend backend/server timers status bytes - - state ...
            fields = line.split()
            if len(fields) > 9 and fields[2:4] == ["alb", f"{self.BACKEND}/{server}"]:
                counts[fields[9][:2]] = counts.get(fields[9][:2], 0) + 1
        return counts

    def servers(self) -> dict[str, dict[str, str]]:
        """Each server's `show stat` row: status (UP, DOWN, MAINT, DRAIN...), scur, stot, ..."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row
            for row in rows
            if row.get("pxname") == self.BACKEND and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def close(self) -> None:
        stop(self.process)
        self.listener.close()


ALB_CONFIG = """
global
    maxconn 8000
    stats socket {socket} mode 600 level admin
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    option http-no-delay
    retries 0
    timeout connect {connect}s
    timeout client {idle}s
    timeout server {idle}s
    timeout http-keep-alive {idle}s
frontend alb
    bind fd@{fd}
    default_backend instances
backend instances
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    timeout check {timeout_ms}ms
    default-server inter {interval_ms}ms fall {fall} rise {rise}
{servers}
"""
