"""Event vs RequestResponse invokes, measured in one run: what each costs and what it buys.

Both daemons (one per invocation type, `workers = 1`) run against the same fake Invoke API
process, whose handler (`handler` below, on the fake's worker threads) fails, streams or holds
as the viewer's `?kind=` says. Per mode:
- time to an error answer: a render that raises before calling back (Event: the callback
  deadline, set short here; Event with the error report a helper sends; RequestResponse: the
  invoke's answer), median and worst of the viewer's wait;
- CPU per request: sssrd's own CPU (/proc, utime + stime) over closed-loop requests of a
  10 x 2 KiB streamed page;
- memory per held render: sssrd's RSS with N renders holding their stream open, minus before;
- throttling: the fake answers 429, both answer 503 with Retry-After (Lambda's asynchronous
  queue absorbing concurrency throttles for Event is not modelled by the fake).
The machine is shared: ratios within one run are what count. Prints a table, writes JSON.

    .venv/bin/python -m bench.invocation_types [--requests 2000] [--held 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvloop

from bench import procs
from sssrd import callback

MODES = ("Event", "RequestResponse")
CHUNK = b"x" * 2048
HANDLER = "bench.invocation_types:handler"
CALLBACK_TIMEOUT = 2.0  # Event's error answer is the callback deadline: 30 s by default


def handler(event: dict, context: Any) -> None:
    """The fake's function: ?kind=ok (10 x 2 KiB), raise, report (an error report, then
    raise, as the helpers do), hold&seconds=S (one chunk, then S seconds before the rest)."""
    query = event.get("queryStringParameters") or {}
    kind = query.get("kind", "ok")
    if kind == "raise":
        raise RuntimeError("render bug")
    if kind == "report":
        report_error(event, "RuntimeError")
        raise RuntimeError("render bug")
    with callback.open_stream(event, headers={"content-type": "text/plain"}) as out:
        if kind == "hold":
            out.write(CHUNK)
            time.sleep(float(query.get("seconds", "5")))
        for _ in range(10):
            out.write(CHUNK)


def report_error(event: dict, error_type: str) -> None:
    """The error callback (BRIEF.md's contract), sent by hand until the helpers send it."""
    url = urlsplit(event["sssrd"]["callbackUrl"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request(
            "POST",
            url.path,
            body=json.dumps({"errorType": error_type}).encode(),
            headers={
                "authorization": f"Bearer {event['sssrd']['token']}",
                "content-type": "application/vnd.sssrd.render-error+json",
            },
        )
        connection.getresponse().read()
    finally:
        connection.close()


async def get(viewer: tuple[str, int], target: str, hold: asyncio.Event | None = None) -> int:
    """One request on its own connection, read to its end; its status. With `hold`, the rest
    is read only once `hold` is set (the render holds its stream open meanwhile)."""
    reader, writer = await asyncio.open_connection(*viewer)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if hold is not None:
            await reader.read(1)
            await hold.wait()
        await reader.read()  # to the end (connection: close)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


async def error_answers(viewer: tuple[str, int], kind: str, count: int) -> dict[str, float]:
    waits = []
    for _ in range(count):
        started = time.perf_counter()
        status = await get(viewer, f"/?kind={kind}")
        waits.append(time.perf_counter() - started)
        assert status in (502, 504), status
    return {
        "status": status,
        "median_ms": statistics.median(waits) * 1000,
        "max_ms": max(waits) * 1000,
    }


async def cpu_per_request(sssrd: procs.Sssrd, requests: int, concurrency: int) -> dict[str, float]:
    remaining = requests

    async def user() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            assert await get(sssrd.viewer, "/?kind=ok") == 200

    await asyncio.gather(*(get(sssrd.viewer, "/?kind=ok") for _ in range(concurrency)))  # warm
    cpu, wall = sssrd.process.cpu(), time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    cpu, wall = sssrd.process.cpu() - cpu, time.perf_counter() - wall
    return {"cpu_ms_per_request": cpu / requests * 1000, "requests_per_s": requests / wall}


async def memory_per_held(sssrd: procs.Sssrd, held: int, seconds: float) -> dict[str, float]:
    before = sssrd.process.rss()
    release = asyncio.Event()
    holders = [
        asyncio.create_task(get(sssrd.viewer, f"/?kind=hold&seconds={seconds}", release))
        for _ in range(held)
    ]
    deadline = time.monotonic() + seconds
    while sssrd.metrics().get("sssrd_streams_in_flight", 0) < held:
        assert time.monotonic() < deadline, "the renders did not all start streaming in time"
        await asyncio.sleep(0.1)
    during = sssrd.process.rss()
    release.set()
    await asyncio.gather(*holders)
    return {"kib_per_held_render": (during - before) / held / 1024, "rss_mib": during / 2**20}


async def throttled(viewer: tuple[str, int]) -> dict[str, Any]:
    started = time.perf_counter()
    status = await get(viewer, "/?kind=ok")
    return {"status": status, "ms": (time.perf_counter() - started) * 1000}


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {mode: {} for mode in MODES}
    with contextlib.ExitStack() as stack:
        fake = procs.start_fake(stack, workdir, "normal", args.held + 64, HANDLER)
        daemons = {mode: start(stack, workdir, fake, mode, args.held) for mode in MODES}
        for mode, sssrd in daemons.items():
            kinds = ("raise", "report") if mode == "Event" else ("raise",)
            for kind in kinds:
                # Each of Event's waits is the whole callback deadline: a few tell it.
                count = min(5, args.errors) if (mode, kind) == ("Event", "raise") else args.errors
                results[mode][f"error_{kind}"] = uvloop.run(
                    error_answers(sssrd.viewer, kind, count)
                )
        for _ in range(2):  # interleaved: the machine's drift hits both modes
            for mode, sssrd in daemons.items():
                run = uvloop.run(cpu_per_request(sssrd, args.requests, args.concurrency))
                best = results[mode].get("cpu")
                if best is None or run["cpu_ms_per_request"] < best["cpu_ms_per_request"]:
                    results[mode]["cpu"] = run
        for mode, sssrd in daemons.items():
            results[mode]["held"] = uvloop.run(memory_per_held(sssrd, args.held, args.hold_s))
    with contextlib.ExitStack() as stack:
        fake = procs.start_fake(stack, workdir, "throttle", 16, HANDLER)
        for mode in MODES:
            sssrd = start(stack, workdir, fake, mode, args.held, suffix="-throttled")
            results[mode]["throttled"] = uvloop.run(throttled(sssrd.viewer))
    return results


def start(
    stack: contextlib.ExitStack,
    workdir: Path,
    fake: procs.Fake,
    mode: str,
    held: int,
    suffix: str = "",
) -> procs.Sssrd:
    return procs.start_sssrd(
        stack,
        workdir,
        f"sssrd-{mode}{suffix}",
        fake,
        invocation_type=mode,
        workers="1",
        callback_timeout=str(CALLBACK_TIMEOUT),
        max_pending=str(held * 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--errors", type=int, default=50)
    parser.add_argument("--held", type=int, default=300)
    parser.add_argument("--hold-s", type=float, default=8.0)
    parser.add_argument("--json", default="bench/results/invocation_types.json")
    args = parser.parse_args()
    busy = procs.wait_until_quiet(30)
    with procs.temp_workdir() as workdir:
        results = measure(args, workdir)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "busy_cores_before": round(busy, 2),
        "load_average": os.getloadavg(),
    }
    report(results, machine)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))


def report(results: dict[str, Any], machine: dict[str, Any]) -> None:
    print(f"machine: {machine}")
    for mode, figures in results.items():
        print(f"\n{mode}")
        for name, values in figures.items():
            shown = ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
            )
            print(f"  {name:14} {shown}")
    event, sync = results["Event"], results["RequestResponse"]
    cpu = sync["cpu"]["cpu_ms_per_request"] / event["cpu"]["cpu_ms_per_request"]
    held = sync["held"]["kib_per_held_render"] / event["held"]["kib_per_held_render"]
    print(
        f"\nRequestResponse / Event: CPU per request {cpu:.2f}, memory per held render {held:.2f}"
    )


if __name__ == "__main__":
    main()
