"""One command for the whole bench: start every process, run the scenarios, report the ratios.

    .venv/bin/python -m bench.run              # full run (~2.5 min here): bench/RESULTS.md
    .venv/bin/python -m bench.run --quick      # short run, 3 rounds of small counts and sizes
    .venv/bin/python -m bench.run --scenario bulk --scenario latency --peer sssrd --peer direct

Peers (bulk, latency): sssrd (body_path auto), sssrd-splice, sssrd-copy (forced), direct (the
client talks to the origin itself), haproxy and nginx (Debian's, in front of the same origin).
Peers (rendezvous, held): sssrd (`workers = auto`), sssrd-w1 and sssrd-w2 (`workers` 1 and
2), sssrd-compat (the proof of concept's protocol) and poc, the lambda-streaming proof of
concept's Node.js proxy (`--poc DIR`, default ../shared/peers/…), all invoking the same fake;
sssrd's rendezvous rows run with kept-alive callbacks and with one connection per request.
Every scenario runs `rounds` times interleaved (3 in both modes) and reports the median of the
rounds with their spread.
The fake Lambda and the origin are separate processes, so their CPU is never counted as a
peer's; a peer's own CPU is all of its processes' (nginx's workers, sssrd's supervisor and
workers).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import report, scenarios
from bench.procs import (
    POC_SOURCE,
    Fake,
    start_fake,
    start_haproxy,
    start_nginx,
    start_origin,
    start_poc,
    start_sssrd,
    start_sssrd_compat,
    temp_workdir,
    wait_until_quiet,
)

SCENARIOS = ("rendezvous", "held", "bulk", "latency")
PEERS = (
    "sssrd",
    "sssrd-splice",
    "sssrd-copy",
    "direct",
    "haproxy",
    "haproxy-64k",
    "nginx",
    "sssrd-compat",
    "poc",
    "sssrd-w1",
    "sssrd-w2",
)
RENDEZVOUS_PEERS = ("sssrd", "sssrd-compat", "poc", "sssrd-w1", "sssrd-w2")
BODY_PEERS = tuple(peer for peer in PEERS if peer not in RENDEZVOUS_PEERS[1:])
WORKER_PEERS = {"sssrd-w1": "1", "sssrd-w2": "2"}  # workers 2 vs 1 in the same run
BODY_PATHS = {"sssrd": "auto", "sssrd-splice": "splice", "sssrd-copy": "copy"}
PROXIES = {"haproxy": start_haproxy, "haproxy-64k": start_haproxy, "nginx": start_nginx}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
GIB = 2**30


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does; --quick shrinks everything but the shape."""

    rendezvous: tuple[tuple[int, int], ...]  # (clients, requests)
    rounds: int  # of rendezvous, bulk and latency, interleaved
    held_streams: int
    bulk_bytes: int
    latency_idle_streams: int
    latency_load_streams: int
    latency_load_waves: int


FULL = Sizes(((50, 20_000), (200, 30_000), (1000, 30_000)), 3, 5000, GIB, 20, 50, 3)
# Quick: the figures (C=200, 5,000 held streams) in rounds short enough to repeat.
QUICK = Sizes(((200, 2000),), 3, 5000, 128 * 2**20, 3, 20, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (~2-4 min)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable")
    parser.add_argument("--peer", action="append", choices=PEERS, help="repeatable")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON directory")
    parser.add_argument(
        "--poc",
        type=Path,
        default=POC_SOURCE,
        metavar="DIR",
        help="the proof of concept's proxy folder (index.js, package.json); default %(default)s",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to leave the CPUs idle",
    )
    return parser.parse_args(argv)


def raise_fd_limit() -> None:
    """Thousands of held connections: the soft fd limit goes up to the hard one (children
    inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def missing_tools(scenario_names: list[str], peer_names: list[str]) -> list[str]:
    needed = {"curl"} if {"bulk"} & set(scenario_names) else set()
    if "rendezvous" in scenario_names:
        needed.add("h2load")
    needed |= {peer.partition("-")[0] for peer in peer_names if peer in PROXIES}
    if "poc" in peer_names:
        needed |= {"node", "npm"}
    return sorted(tool for tool in needed if shutil.which(tool) is None)


def start_peers(
    stack: contextlib.ExitStack,
    workdir: Path,
    fake: Fake,
    names: list[str],
    poc_source: Path = POC_SOURCE,
) -> list[scenarios.Peer]:
    peers = []
    for name in names:
        if name in WORKER_PEERS:
            sssrd = start_sssrd(stack, workdir, name, fake, workers=WORKER_PEERS[name])
            peers.append(scenarios.Peer(name, sssrd.viewer, sssrd.process, sssrd))
        elif name in BODY_PATHS or name == "sssrd-compat":
            sssrd = (
                start_sssrd_compat(stack, workdir, fake)
                if name == "sssrd-compat"
                else start_sssrd(stack, workdir, name, fake, body_path=BODY_PATHS[name])
            )
            peers.append(scenarios.Peer(name, sssrd.viewer, sssrd.process, sssrd))
        elif name == "poc":
            process = start_poc(stack, workdir, fake, poc_source)
            peers.append(scenarios.Peer(name, ("127.0.0.1", process.port), process))
    if {"direct", *PROXIES} & set(names):
        origin_port = start_origin(stack, workdir).port
        for name in names:
            if name == "direct":
                peers.append(scenarios.Peer("direct", ("127.0.0.1", origin_port)))
            elif name in PROXIES:
                process = PROXIES[name](stack, workdir, origin_port, name)
                peers.append(scenarios.Peer(name, ("127.0.0.1", process.port), process))
    return peers


def run(args: argparse.Namespace) -> report.Results:
    sizes = QUICK if args.quick else FULL
    scenario_names = args.scenario or list(SCENARIOS)
    peer_names = args.peer or list(PEERS)
    results: report.Results = {
        "mode": "quick" if args.quick else "full",
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": report.machine_details(),
        "sizes": sizes.__dict__,
    }
    foreign_load = report.ForeignLoad()
    with temp_workdir() as workdir, contextlib.ExitStack() as stack:
        fake = start_fake(stack, workdir)
        peers = start_peers(stack, workdir, fake, peer_names, args.poc)
        body_peers = [peer for peer in peers if peer.name in BODY_PEERS]
        if "rendezvous" in scenario_names:
            log("rendezvous")
            results["rendezvous"] = rendezvous_rows(
                [peer for peer in peers if peer.name in RENDEZVOUS_PEERS], fake, sizes
            )
        if "bulk" in scenario_names:
            log("bulk")
            results["bulk"] = scenarios.bulk(body_peers, sizes.bulk_bytes, sizes.rounds)
        if "latency" in scenario_names:
            log("chunk latency")
            results["latency"] = scenarios.chunk_latency(
                body_peers,
                sizes.latency_idle_streams,
                sizes.latency_load_streams,
                sizes.latency_load_waves,
                sizes.rounds,
            )
        if "held" in scenario_names:
            log("held streams")
            results["held"] = [scenarios.held_streams(workdir, sizes.held_streams)]
            if "poc" in peer_names:
                results["held"].append(
                    scenarios.held_streams(workdir, sizes.held_streams, poc_source=args.poc)
                )
    results["foreign_load"] = foreign_load.stop()
    results["targets"] = report.evaluate_targets(results)
    return results


def rendezvous_rows(peers: list[scenarios.Peer], fake: Fake, sizes: Sizes) -> list[report.Row]:
    """Every peer at every size and callback style, in interleaved rounds."""
    for peer in peers:
        scenarios.warm_up(peer)
    return scenarios.rendezvous_rounds(peers, fake.process, sizes.rendezvous, sizes.rounds)


STARTED = time.monotonic()


def log(what: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools(args.scenario or list(SCENARIOS), args.peer or list(PEERS))
    if missing:
        print(
            f"missing: {', '.join(missing)} (apt-get install -y haproxy nginx-light "
            "nghttp2-client curl)",
            file=sys.stderr,
        )
        return 2
    raise_fd_limit()
    if args.wait_quiet > 0:
        busy = wait_until_quiet(args.wait_quiet)
        log(f"machine busy before the run: {busy:.2f} cores")
    results = run(args)
    print(report.render(results))
    path = report.write_json(results, args.results)
    log(f"done; JSON in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
