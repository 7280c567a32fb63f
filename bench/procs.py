"""Starting, watching and stopping the processes a benchmark measures.

Every process is started here with its output in a temp dir and its readiness read from what it
prints (or a successful connect), and stopped by its own pid when the ExitStack unwinds. CPU comes
from /proc/<pid>/stat (utime + stime, summed over a process's children for nginx's workers) and
memory from /proc/<pid>/status (VmRSS), so the measuring never happens inside a measured process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
# The team's copy of the proof of concept's proxy; --poc points elsewhere (a checkout of the
# public repository's src/proxy).
POC_SOURCE = REPO.parent / "shared" / "peers" / "lambda-streaming-poc"
PEER_TEMPLATES = Path(__file__).resolve().parent / "peers"
SSSRD = REPO / ".venv" / "bin" / "sssrd"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 20.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    return sum(user_system_seconds(pid))


def user_system_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # utime, stime


def run_seconds(pid: int) -> float:
    """Seconds on a CPU so far, to the nanosecond (schedstat), summed over the live threads:
    an idle process's few milliseconds a second are below /proc/<pid>/stat's 10 ms tick."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def machine_busy_seconds() -> float:
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def wait_until_quiet(limit: float, threshold: float = 0.2) -> float:
    """Wait (at most `limit` seconds) until the machine's busy cores fall below `threshold`;
    returns the last reading. Others' work on a shared machine skews every figure."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < threshold or time.monotonic() > deadline:
            return busy


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def free_port() -> int:
    """A port that was free a moment ago (for peers that cannot bind port 0 and tell us)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on {port} after {READY_TIMEOUT}s")


def wait_for_line(path: Path, pattern: str, process: subprocess.Popen, what: str) -> str:
    """The first line of `path` matching `pattern`, polled while the process writes it."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if re.search(pattern, line):
                return line
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {path.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} printed no {pattern!r} in {READY_TIMEOUT}s: {path.read_text()}")


@dataclass
class Process:
    """A started process; `measured` says whose CPU counts as this peer's: the process itself,
    its children only (nginx's workers, not the idle master), or both (sssrd's supervisor and
    workers)."""

    name: str
    popen: subprocess.Popen
    measured: Literal["self", "children", "tree"] = "self"
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def measured_pids(self) -> list[int]:
        if self.measured == "self":
            return [self.pid]
        children = child_pids(self.pid)
        return children if self.measured == "children" else [self.pid, *children]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.measured_pids())

    def run_time(self) -> float:
        """cpu() to the nanosecond, for the few milliseconds an idle process uses."""
        return sum(run_seconds(pid) for pid in self.measured_pids())

    def system_cpu(self) -> float:
        """The kernel's share of cpu(): syscalls, and loopback TCP work done on our behalf."""
        return sum(user_system_seconds(pid)[1] for pid in self.measured_pids())

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.measured_pids())

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(stack: contextlib.ExitStack, name: str, argv: list[str], log: Path, **kw) -> Process:
    with log.open("w") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **{"cwd": REPO, **kw})
    process = Process(name, popen)
    stack.callback(process.stop)
    return process


@dataclass
class Fake:
    process: Process
    endpoint: str
    env: dict[str, str]


def start_fake(
    stack: contextlib.ExitStack,
    workdir: Path,
    behaviour: str = "normal",
    workers: int = 256,
    handler: str = "bench.lambda_handler:handler",
) -> Fake:
    """The fake Invoke API running `handler` (by default bench.lambda_handler) in its own
    process."""
    log = workdir / f"fake-{behaviour.replace('=', '-')}.log"
    argv = [sys.executable, "-m", "sssrd.testing.fake_lambda", "--listen", "127.0.0.1:0"]
    argv += ["--handler", handler, "--behaviour", behaviour]
    argv += ["--workers", str(workers)]
    process = spawn(stack, "fake", argv, log)
    endpoint = wait_for_line(log, r"^http://", process.popen, "fake lambda").strip()
    wait_for_line(log, r"^export AWS_EC2_METADATA_DISABLED=", process.popen, "fake lambda")
    env = {}
    for line in log.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
    return Fake(process, endpoint, env)


@dataclass
class Sssrd:
    """A running sssrd: its process and the addresses it printed."""

    name: str
    process: Process
    viewer: tuple[str, int]
    admin: tuple[str, int]
    settings: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Every unlabelled or labelled sample from /metrics, keyed by its exposition name."""
        connection = http.client.HTTPConnection(*self.admin, timeout=10)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


def split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def start_sssrd(
    stack: contextlib.ExitStack, workdir: Path, name: str, fake: Fake, **settings: str
) -> Sssrd:
    """sssrd with the Lambda invoker pointed at the fake; settings become --flags."""
    argv = [str(SSSRD), "serve", "--listen", "127.0.0.1:0", "--callback-listen", "127.0.0.1:0"]
    argv += ["--admin-listen", "127.0.0.1:0", "--invoker", "lambda", "--function", "render"]
    argv += ["--endpoint-url", fake.endpoint]
    for key, value in settings.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, **fake.env}
    process = spawn(stack, name, argv, workdir / f"{name}.log", env=env)
    process.measured = "tree"  # with workers > 1, the supervisor and every worker
    line = wait_for_line(workdir / f"{name}.log", "sssrd listening", process.popen, name)
    ready = json.loads(line)
    return Sssrd(
        name, process, split_address(ready["viewer"]), split_address(ready["admin"]), settings
    )


def start_sssrd_compat(stack: contextlib.ExitStack, workdir: Path, fake: Fake) -> Sssrd:
    """sssrd speaking the proof of concept's protocol, for a like-for-like comparison."""
    return start_sssrd(stack, workdir, "sssrd-compat", fake, compat="lambda-streaming")


def start_poc(stack: contextlib.ExitStack, workdir: Path, fake: Fake, source: Path) -> Process:
    """The proof of concept's Node.js proxy, from a temporary copy of `source` with its one
    dependency installed by npm (npm's cache makes later runs offline-fast); nothing of it is
    kept. It serves viewers and callbacks on one port and invokes the same fake."""
    copy = Path(tempfile.mkdtemp(prefix="poc-", dir=workdir))
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("node_modules"), dirs_exist_ok=True)
    npm = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--omit=dev"]
    subprocess.run(npm, cwd=copy, check=True, capture_output=True, timeout=300)
    port = free_port()
    env = {
        **os.environ,
        **fake.env,
        "PORT": str(port),
        "ORIGIN": f"http://127.0.0.1:{port}",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_LAMBDA": fake.endpoint,
        "LAMBDA_FUNCTION_NAME": "render",
    }
    log = copy / "poc.log"
    process = spawn(stack, "poc", ["node", "index.js"], log, cwd=copy, env=env)
    process.port = port
    wait_for_line(log, "Started server", process.popen, "the proof of concept")
    return process


def start_origin(stack: contextlib.ExitStack, workdir: Path) -> Process:
    log = workdir / "origin.log"
    argv = [sys.executable, "-m", "bench.origin", "--listen", "127.0.0.1:0"]
    process = spawn(stack, "origin", argv, log)
    url = wait_for_line(log, r"^http://", process.popen, "origin").strip()
    process.port = split_address(url.removeprefix("http://"))[1]
    return process


def render_template(template: str, workdir: Path, output: str, **values: object) -> Path:
    """bench/peers/<template> with $values filled in, written to workdir/<output>."""
    text = Template((PEER_TEMPLATES / template).read_text()).substitute(workdir=workdir, **values)
    path = workdir / output
    path.write_text(text)
    return path


def start_haproxy(
    stack: contextlib.ExitStack, workdir: Path, origin_port: int, name: str = "haproxy"
) -> Process:
    """HAProxy in the foreground, one thread; `haproxy-64k` gets 64 KiB buffers."""
    port = free_port()
    tuning = "tune.bufsize 65536" if name == "haproxy-64k" else ""
    config = render_template(
        "haproxy.cfg", workdir, f"{name}.cfg", port=port, origin_port=origin_port, tuning=tuning
    )
    argv = ["haproxy", "-db", "-f", str(config)]
    process = spawn(stack, name, argv, workdir / f"{name}.log")
    wait_for_port(port, process.popen, name, workdir / f"{name}.log")
    process.port = port
    return process


def start_nginx(
    stack: contextlib.ExitStack, workdir: Path, origin_port: int, name: str = "nginx"
) -> Process:
    """nginx with its master in the foreground; the CPU measured is its worker's."""
    port = free_port()
    config = render_template(
        "nginx.conf", workdir, "nginx.conf", port=port, origin_port=origin_port
    )
    argv = ["nginx", "-c", str(config), "-e", str(workdir / "nginx-error.log")]
    process = spawn(stack, "nginx", argv, workdir / "nginx.log")
    process.measured = "children"
    wait_for_port(port, process.popen, "nginx", workdir / "nginx-error.log")
    process.port = port
    return process


@contextlib.contextmanager
def temp_workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sssrd-bench-") as name:
        yield Path(name)
