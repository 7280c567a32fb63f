"""The fleet in miniature: sssrd instances behind an ALB stand-in, under open-loop load.

`make fleet` (and tests/test_fleet.py, with a smaller Shape) builds the deployment's shape from
real parts on one machine. A bridge this run creates joins one network namespace per instance and
one for the render Lambda. Each instance runs `sssrd serve --invoker=lambda --callback-url=auto
--workers=auto` and learns its own address from its own fake IMDS, so every callback crosses from
the Lambda's namespace to the instance that holds the viewer. HAProxy plays the ALB (least
outstanding requests, /healthz checks), the TLS edge of tests/loadtest_peers.py plays CloudFront,
and `sssrd loadtest --rate` drives pages that stream for 1-5 s. The ALB's deregistration delay
and health checks come from cdk/sssrd_cdk/timings.py for the run's drain_timeout (see
`alb_timings`). Scenarios run in order on one fleet: steady (i1-i3), scale-out (i4 boots
mid-run), scale-in (i1 deregistered, drained, then SIGTERM, the Auto Scaling order) and crash
(i2 SIGKILLed). `check` lists what does not hold. The parts (namespaces, processes, the Lambda,
an instance, the ALB) live in tests/fleet_parts.py; everything is removed in `finally`, and what
a killed run left is swept at the next start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cdk"))  # the CDK app is not an installed package
sys.path.insert(0, str(ROOT / "tests"))

from fleet_parts import (  # noqa: E402
    ADMIN_PORT,
    BOOT_TIMEOUT_S,
    CALLBACK_PORT,
    NAMESPACE_PREFIX,
    Alb,
    AlbTimings,
    Instance,
    Network,
    Node,
    RenderLambda,
    spawn,
    stop,
    sweep_leftovers,
)
from loadtest_peers import Edge, loadtest_argv  # noqa: E402
from nspawn import wait_until  # noqa: E402
from sssrd_cdk.timings import derive_timings  # noqa: E402

from sssrd import config as sssrd_config  # noqa: E402
from sssrd.testing import fake_lambda  # noqa: E402

__all__ = [
    "NAMESPACE_PREFIX",
    "PROMISES",
    "REPORT_FIELDS",
    "SCENARIOS",
    "SLIM",
    "check",
    "run_fleet",
]

FUNCTION = "fleet-render"
SETTLE_TIMEOUT_S = 3.0
SAMPLE_S = 0.5


@dataclass(frozen=True)
class Shape:
    """How hard and how long: `make fleet` uses FULL, the test suite SLIM."""

    rate: float  # requests per second, open loop
    seconds: float  # load per scenario
    min_requests: int  # what each scenario must reach to count
    stream_ms: tuple[int, int] = (1000, 5000)
    # The run's drain_timeout: covers the longest stream and its callback wait. It sets the
    # deregistration delay (derive_timings) and the scale of the ALB's health checks.
    drain_timeout: float = 6.0
    probe_every: int = 50  # every n-th render also sends its callback to the wrong instance


FULL = Shape(rate=100, seconds=6, min_requests=500)
SLIM = Shape(
    rate=40,
    seconds=3,
    min_requests=100,
    stream_ms=(1000, 2000),
    drain_timeout=3.0,
    probe_every=15,
)


# -- timings ------------------------------------------------------------------------------------


def instance_flags(shape: Shape) -> dict[str, Any]:
    """The settings every instance runs with (beyond their addresses), as config keys."""
    return {
        "invoker": "lambda",
        "function": FUNCTION,
        "region": fake_lambda.DEFAULT_REGION,
        "callback_url": "auto",
        "workers": "auto",
        "drain_timeout": shape.drain_timeout,
    }


def alb_timings(shape: Shape) -> AlbTimings:
    """The CDK app's timings for the run's settings. The deregistration delay is derived from the
    run's drain_timeout as in production; the health checks (fixed in production: 5 s interval,
    3 s timeout) shrink by the same factor the run's drain_timeout is below the default one, so
    the delay/interval ratio a deployment has is kept. Thresholds and idle timeouts are unscaled.
    """

    def derived(flags: dict[str, Any]) -> Any:
        return derive_timings(sssrd_config.load_settings(environ={}, flags=flags))

    run = derived(instance_flags(shape))
    production = derived({**instance_flags(shape), "drain_timeout": None})
    scale = run.deregistration_delay_s / production.deregistration_delay_s
    return AlbTimings(
        deregistration_delay_s=run.deregistration_delay_s,
        health_interval_s=round(production.health_interval_s * scale, 3),
        health_timeout_s=round(production.health_timeout_s * scale, 3),
        healthy_threshold=run.healthy_threshold,
        unhealthy_threshold=run.unhealthy_threshold,
        idle_timeout_s=run.alb_idle_timeout_s,
        scale=scale,
    )


# -- the fleet and its scenarios --------------------------------------------------------------


@dataclass
class Fleet:
    """Every part of one run; built by `fleet()`, which removes it all on the way out."""

    shape: Shape
    timings: AlbTimings
    workdir: Path
    render: RenderLambda
    instances: list[Instance]
    alb: Alb
    edge: Edge
    serving: list[Instance] = field(default_factory=list)

    def instance(self, name: str) -> Instance:
        return next(x for x in self.instances if x.name == name)


INSTANCE_NAMES = ("i1", "i2", "i3", "i4")
FIRST_INSTANCES = 3


@contextlib.contextmanager
def fleet(shape: Shape, workdir: Path) -> Iterator[Fleet]:
    """Boot i1-i3 behind the ALB (i4 registered later, by scale-out) and the edge."""
    swept = sweep_leftovers()
    if swept:
        print(f"removed leftovers of killed runs: {', '.join(swept)}", file=sys.stderr)
    timings = alb_timings(shape)
    with contextlib.ExitStack() as cleanup:
        network = Network()
        cleanup.callback(network.close)
        nodes = [network.node(name, 11 + n) for n, name in enumerate(INSTANCE_NAMES)]
        render = RenderLambda(network.node("lambda", 2), workdir, [x.address for x in nodes])
        cleanup.callback(stop, render.process)
        instances = [
            Instance(name, node, network, workdir, instance_flags(shape))
            for name, node in zip(INSTANCE_NAMES, nodes, strict=True)
        ]
        for instance in instances:
            cleanup.callback(instance.close)
        for instance in instances[:FIRST_INSTANCES]:
            instance.launch(render.endpoint_url)
        for instance in instances[:FIRST_INSTANCES]:
            instance.wait_listening()
        alb = Alb(workdir, instances, timings, registered=FIRST_INSTANCES)
        cleanup.callback(alb.close)
        edge = Edge(workdir, alb.port)
        cleanup.callback(edge.close)
        running = Fleet(shape, timings, workdir, render, instances, alb, edge)
        running.serving = instances[:FIRST_INSTANCES]
        wait_until(lambda: all_up(running), "the ALB to see i1-i3 healthy", BOOT_TIMEOUT_S)
        yield running


def all_up(running: Fleet) -> bool:
    status = running.alb.servers()
    return all(status[x.name]["status"] == "UP" for x in running.serving)


class Load:
    """One `sssrd loadtest` run through the edge, in the background; `finish()` reads its report."""

    def __init__(self, running: Fleet, name: str, seconds: float) -> None:
        shape = running.shape
        self.seconds = seconds
        low, high = shape.stream_ms
        self.json = running.workdir / f"{name}.json"
        self.html = running.workdir / f"{name}.html"
        url = running.edge.url(
            f"/page?ms={{rand:{low}-{high}}}&n={{n}}&probe={shape.probe_every}"
            f"&pop=FLEET{name.upper().replace('-', '')}1&cache=Miss"
        )
        argv = loadtest_argv(url, "--rate", str(shape.rate), "--duration", str(seconds))
        argv += ["--cacert", str(running.edge.cafile), "--timeout", "30", "--seed", "26"]
        argv += ["--connect-to", f"127.0.0.1:{running.edge.port}"]
        argv += ["--json", str(self.json), "--html", str(self.html)]
        self.process = spawn(argv, running.workdir / f"{name}.loadtest.log")
        self.started = time.monotonic()
        self.sampler = StreamSampler(running)
        self.limit = seconds + 45

    def at(self, seconds: float) -> None:
        """Return when the run is `seconds` old (the scenario's schedule)."""
        time.sleep(max(0.0, self.started + seconds - time.monotonic()))

    def stop_arrivals(self) -> None:
        """End the run early: `sssrd loadtest` stops arriving on SIGINT and lets what is in
        flight finish."""
        self.process.send_signal(signal.SIGINT)

    def finish(self) -> dict[str, Any]:
        code = self.process.wait(max(1.0, self.started + self.limit - time.monotonic()))
        if code != 0:
            raise RuntimeError(
                f"loadtest exited {code}; see {self.json.with_suffix('.loadtest.log')}"
            )
        return json.loads(self.json.read_text())


class StreamSampler:
    """Sums sssrd_streams_in_flight over the serving instances every SAMPLE_S in a thread;
    `most` is the largest sum seen."""

    def __init__(self, running: Fleet) -> None:
        self.running = running
        self.most = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stopped.wait(SAMPLE_S):
            total = 0.0
            for instance in list(self.running.serving):
                with contextlib.suppress(OSError, KeyError):  # an instance may just have died
                    total += instance.metrics()["sssrd_streams_in_flight"]
            self.most = max(self.most, int(total))

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def scenario(
    running: Fleet, name: str, events: Callable[[Fleet, Load], dict[str, Any]]
) -> dict[str, Any]:
    """Run the load with the scenario's events; one row of the fleet report."""
    began = time.monotonic()
    instances = len(running.serving)
    # Scale-out's load ends once the new instance has served a while (an instance booting on two
    # busy cores took 3-7 s to listen); BOOT_TIMEOUT_S bounds that wait.
    seconds = running.shape.seconds + (BOOT_TIMEOUT_S if events is scale_out else 0)
    load = Load(running, name, seconds)
    try:
        facts = events(running, load)
        report = load.finish()
    finally:
        load.sampler.stop()
        if load.process.poll() is None:
            stop(load.process)
    errors = report["errors"]
    requests = report["requests"]
    return {
        "name": name,
        "instances": instances,
        "instances_at_end": len(running.serving),
        "requests": requests["sent"],
        "completed": requests["ok"],
        "truncated": errors["truncated"],
        "failed": requests["failed"] - errors["truncated"],
        "crashed_instance_streams": facts.pop("crashed_instance_streams", None),
        "most_streams_in_flight": load.sampler.most,
        "errors": {kind: count for kind, count in errors.items() if count},
        "failed_by_status": failed_by_status(report),
        "latency_ms": {k: report["latency_ms"][k]["p99"] for k in ("ttfb", "total")},
        "loadtest_json": str(load.json),
        "loadtest_html": str(load.html),
        "wall_s": round(time.monotonic() - began, 1),
        **facts,
    }


def failed_by_status(report: dict[str, Any]) -> dict[str, int]:
    """The failed requests' statuses (502: the instance died holding the request; 503: the ALB
    could not connect), from the load test's error samples (it keeps up to 2,000)."""
    counts: dict[str, int] = {}
    for sample in report["error_samples"]:
        if sample["kind"] in ("http_4xx", "http_5xx"):
            counts[str(sample["status"])] = counts.get(str(sample["status"]), 0) + 1
    return counts


def steady(running: Fleet, load: Load) -> dict[str, Any]:
    load.at(running.shape.seconds * 0.6)
    return {}


def scale_out(running: Fleet, load: Load) -> dict[str, Any]:
    """i4 is launched and registered; the ALB may send it nothing until it passed `rise` checks."""
    newcomer = running.instance("i4")
    load.at(running.shape.seconds / 3)
    running.alb.register(newcomer.name)
    newcomer.launch(running.render.endpoint_url)
    sessions_before_healthy = 0

    def healthy() -> bool:
        nonlocal sessions_before_healthy
        row = running.alb.servers()[newcomer.name]
        if row["status"] != "UP":
            sessions_before_healthy = max(sessions_before_healthy, int(row["stot"]))
            return False
        return True

    newcomer.wait_listening()
    wait_until(healthy, "the ALB to see i4 healthy", BOOT_TIMEOUT_S)
    healthy_at = time.monotonic()
    running.serving.append(newcomer)
    shape = running.shape
    load.at(max(shape.seconds, healthy_at - load.started + shape.seconds / 2))
    load.stop_arrivals()
    return {
        "scaled_out": newcomer.name,
        "sessions_before_healthy": sessions_before_healthy,
        "listening_after_launch_s": round(newcomer.listening_at - newcomer.launched_at, 2),
        "healthy_after_listening_s": round(healthy_at - newcomer.listening_at, 2),
        "sessions_once_healthy": int(running.alb.servers()[newcomer.name]["stot"]),
    }


def scale_in(running: Fleet, load: Load) -> dict[str, Any]:
    """Deregister i1 (drain: no new requests), wait the deregistration delay, end what is left
    as the ALB does, then SIGTERM, as the Auto Scaling group terminates the instance."""
    leaving = running.instance("i1")
    load.at(2.0)
    running.alb.set_state(leaving.name, "drain")
    deregistered = time.monotonic()
    streams_at_deregistration = leaving.metrics().get("sssrd_streams_in_flight", 0.0)
    time.sleep(running.timings.deregistration_delay_s)  # the delay is the thing under test
    row = running.alb.servers()[leaving.name]
    running.alb.set_state(leaving.name, "maint")
    running.alb.command(f"shutdown sessions server {Alb.BACKEND}/{leaving.name}")
    streams_at_sigterm = leaving.metrics().get("sssrd_streams_in_flight", 0.0)
    assert leaving.process is not None
    terminated = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)
    code = leaving.process.wait(running.shape.drain_timeout + 10)
    running.serving.remove(leaving)
    return {
        "scaled_in": leaving.name,
        "alb_endings_at_scaled_in": running.alb.endings(leaving.name),
        "streams_at_deregistration": streams_at_deregistration,
        "sessions_cut_after_delay": int(row["scur"]),
        "streams_at_sigterm": streams_at_sigterm,
        "drain_s": round(time.monotonic() - terminated, 2),
        "deregistered_for_s": round(terminated - deregistered, 2),
        "exit_code": code,
    }


def crash(running: Fleet, load: Load) -> dict[str, Any]:
    """SIGKILL i2 mid-run. Its stream count is read the moment before: the Lambda is paused
    (SIGSTOP) so no stream of i2 can start or end, the bytes already sent are left to arrive
    (both sides' socket queues empty), the gauge is read twice alike, then the kill, then the
    Lambda resumes."""
    victim = running.instance("i2")
    assert victim.process is not None
    load.at(running.shape.seconds * 0.6)
    render = running.render
    os.killpg(render.process.pid, signal.SIGSTOP)
    paused = time.monotonic()
    try:
        samples = wait_until(lambda: settled(victim, render.node), "i2 to settle", SETTLE_TIMEOUT_S)
        os.killpg(victim.process.pid, signal.SIGKILL)
    finally:
        os.killpg(render.process.pid, signal.SIGCONT)
        paused = time.monotonic() - paused
    victim.process.wait(10)
    running.serving.remove(victim)
    load.at(load.seconds)  # by now the ALB's checks have failed `fall` times
    return {
        "crashed": victim.name,
        "lambda_paused_s": round(paused, 3),
        "crashed_instance_streams": int(samples["sssrd_streams_in_flight"]),
        "crashed_instance_pending": int(samples["sssrd_pending_callbacks"]),
        # How the ALB's requests to it ended: SD cut mid-response (the streams), SH before the
        # head (502), SC refused until its checks had failed `fall` times (503).
        "alb_endings_at_crashed": running.alb.endings(victim.name),
    }


def settled(victim: Instance, lambda_node: Node) -> dict[str, float] | None:
    """i2's samples once no callback byte is in flight to it and two reads of its stream
    count agree, else None."""
    address = victim.node.address
    to_victim = [q for q in lambda_node.socket_queues() if q[3].rpartition(":")[0] == address]
    at_victim = [
        q
        for q in victim.node.socket_queues()
        if CALLBACK_PORT <= int(q[2].rpartition(":")[2]) < ADMIN_PORT  # a worker's callback port
    ]
    if any(send for _, send, _, _ in to_victim) or any(recv for recv, _, _, _ in at_victim):
        return None
    first, second = victim.metrics(), victim.metrics()
    # Pending requests still arrive (the ALB keeps sending); streams cannot start or end.
    stable = first["sssrd_streams_in_flight"] == second["sssrd_streams_in_flight"]
    return second if stable else None


SCENARIOS: tuple[tuple[str, Callable[[Fleet, Load], dict[str, Any]]], ...] = (
    ("steady", steady),
    ("scale-out", scale_out),
    ("scale-in", scale_in),
    ("crash", crash),
)


def run_fleet(shape: Shape, workdir: Path) -> dict[str, Any]:
    """Every scenario on one fleet; the report (scenarios, probes, timings)."""
    started = time.monotonic()
    with fleet(shape, workdir) as running:
        booted = time.monotonic() - started
        rows = [scenario(running, name, events) for name, events in SCENARIOS]
        probes = running.render.probes()
        instance_ips = [x.node.address for x in running.instances]
    timings = running.timings
    return {
        "scenarios": rows,
        "wrong_instance_callbacks": {
            "sent": len(probes),
            "answers": count_answers(probes),
            "from_own_address": sum(p["own"] in instance_ips for p in probes),
        },
        "shape": shape.__dict__,
        "alb_timings": timings.__dict__,
        "boot_s": round(booted, 1),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def count_answers(probes: list[dict[str, Any]]) -> dict[str, int]:
    answers: dict[str, int] = {}
    for probe in probes:
        answers[str(probe["answer"])] = answers.get(str(probe["answer"]), 0) + 1
    return answers


# What each scenario's row holds at least (issue 26's report format).
REPORT_FIELDS = (
    "name",
    "instances",
    "requests",
    "completed",
    "truncated",
    "failed",
    "crashed_instance_streams",
)
WRONG_INSTANCE_ANSWERS = frozenset({"401", "refused"})
NO_LOSS = frozenset({"steady", "scale-out", "scale-in"})
Report = dict[str, Any]


def rows(report: Report, *names: str) -> list[dict[str, Any]]:
    return [row for row in report["scenarios"] if row["name"] in names]


def enough_load(report: Report, shape: Shape) -> list[str]:
    """Each scenario reached its request count on at least three instances."""
    return [
        f"{row['name']}: {row['requests']} requests on {row['instances']} instances"
        for row in report["scenarios"]
        if row["requests"] < shape.min_requests or row["instances"] < FIRST_INSTANCES
    ]


def nothing_lost(report: Report, shape: Shape) -> list[str]:
    """Steady, scale-out and scale-in: no stream truncated, no request failed."""
    return [
        f"{row['name']}: {row['truncated']} truncated, {row['failed']} failed {row['errors']}"
        for row in rows(report, *NO_LOSS)
        if row["truncated"] or row["failed"]
    ]


def crash_costs_its_own_streams(report: Report, shape: Shape) -> list[str]:
    """Crash: the load test saw exactly as many truncated streams as the instance held when it
    died (none of them as complete), so did the ALB, and every other failure was a 5xx."""
    problems = []
    for row in rows(report, "crash"):
        held = row["crashed_instance_streams"]
        cut = row["alb_endings_at_crashed"].get("SD", 0)
        if not held or row["truncated"] != held or cut != held:
            problems.append(
                f"crash: {row['truncated']} truncated ({cut} cut by the ALB), the instance "
                f"held {held}"
            )
        if set(row["errors"]) - {"truncated", "http_5xx"}:
            problems.append(f"crash: failures other than truncation and 5xx: {row['errors']}")
    return problems


def new_instance_waits_for_health(report: Report, shape: Shape) -> list[str]:
    """Scale-out: the ALB sent the new instance nothing until healthy, and traffic after."""
    return [
        f"scale-out: {row['sessions_before_healthy']} requests before healthy, "
        f"{row['sessions_once_healthy']} after"
        for row in rows(report, "scale-out")
        if row["sessions_before_healthy"] or not row["sessions_once_healthy"]
    ]


def scale_in_drains_within_the_delay(report: Report, shape: Shape) -> list[str]:
    """Scale-in: no stream left to cut when the deregistration delay ended, every request to
    the instance ended normally for the ALB, and the instance exited cleanly."""
    return [
        f"scale-in: {row['sessions_cut_after_delay']} streams cut after the delay, "
        f"ALB endings {row['alb_endings_at_scaled_in']}, exit code {row['exit_code']}"
        for row in rows(report, "scale-in")
        if row["sessions_cut_after_delay"]
        or set(row["alb_endings_at_scaled_in"]) != {"--"}
        or row["exit_code"] != 0
    ]


def callbacks_reach_only_their_instance(report: Report, shape: Shape) -> list[str]:
    """Callback URLs name the instance's own (IMDS) address; another instance refuses them."""
    probes = report["wrong_instance_callbacks"]
    problems = []
    if not probes["sent"] or set(probes["answers"]) - WRONG_INSTANCE_ANSWERS:
        problems.append(f"callbacks to the wrong instance were answered {probes['answers']}")
    if probes["from_own_address"] != probes["sent"]:
        problems.append("a callback URL did not name its instance's own (IMDS) address")
    return problems


PROMISES = {
    promise.__name__: promise
    for promise in (
        enough_load,
        nothing_lost,
        crash_costs_its_own_streams,
        new_instance_waits_for_health,
        scale_in_drains_within_the_delay,
        callbacks_reach_only_their_instance,
    )
}


def check(report: Report, shape: Shape) -> list[str]:
    """What the fleet promises and did not hold (empty: everything held)."""
    return [problem for promise in PROMISES.values() for problem in promise(report, shape)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--slim", action="store_true", help="the test suite's smaller run")
    parser.add_argument("--out", type=Path, help="directory for the reports (default: a new one)")
    arguments = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make fleet: needs root (it makes network namespaces and a bridge)", file=sys.stderr)
        return 2
    for tool in ("haproxy", "ip", "nsenter", "setpriv", "ss"):
        if shutil.which(tool) is None:
            print(f"make fleet: {tool} not found (make system-packages)", file=sys.stderr)
            return 2
    shape = SLIM if arguments.slim else FULL
    workdir = arguments.out or Path(tempfile.mkdtemp(prefix="sssrd-fleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = run_fleet(shape, workdir)
    problems = check(report, shape)
    report["problems"] = problems
    path = workdir / "fleet.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    for row in report["scenarios"]:
        print(
            f"{row['name']:<10} {row['instances']} instances  {row['requests']} requests  "
            f"{row['completed']} completed  {row['truncated']} truncated  {row['failed']} failed  "
            f"crashed instance held {row['crashed_instance_streams']}"
        )
    for problem in problems:
        print(f"DOES NOT HOLD: {problem}", file=sys.stderr)
    print(path)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
