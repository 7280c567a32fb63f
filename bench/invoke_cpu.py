"""CPU per asynchronous invoke in the calling process: the lean client vs boto3's invoke().

The fake Invoke API runs in its own process (behaviour "never": 202, no handler), so the CPU
counted here (time.process_time, all threads of this process) is the invoker's alone. Prints a
table and writes JSON. Figures drift on shared machines; the ratio is what holds.

    .venv/bin/python bench/invoke_cpu.py [--count 3000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import uvloop

from sssrd.invokers import aws

PAYLOAD = json.dumps({"version": "2.0", "rawPath": "/", "body": "x" * 800}).encode()


def start_fake() -> tuple[subprocess.Popen, dict[str, str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sssrd.testing.fake_lambda",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            "sssrd.demo:handler",
            "--behaviour",
            "never",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()
    env = {}
    for _ in range(5):
        name, _, value = process.stdout.readline().strip().removeprefix("export ").partition("=")
        env[name] = value
    return process, env


def settings(client: str) -> SimpleNamespace:
    return SimpleNamespace(
        function="render",
        qualifier="",
        region="",
        endpoint_url="",
        invoke_client=client,
        invoke_timeout=5.0,
        invoke_retries=0,
        invoke_connections=64,
    )


async def measure(client: str, count: int, concurrency: int) -> dict[str, float]:
    invoker = (aws.LeanInvoker if client == "lean" else aws.Boto3Invoker)(settings(client))
    for _ in range(50):  # warm connections and caches
        await invoker.invoke(PAYLOAD)
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await invoker.invoke(PAYLOAD)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    invoker.close()
    return {"cpu_ms_per_invoke": cpu / count * 1000, "invokes_per_s": count / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", default="bench/results/invoke_cpu.json")
    args = parser.parse_args()
    fake, env = start_fake()
    os.environ.update(env)
    try:
        results = {}
        for client in ("lean", "boto3", "lean", "boto3"):  # interleaved: drift hits both
            run = uvloop.run(measure(client, args.count, args.concurrency))
            results.setdefault(client, []).append(run)
    finally:
        fake.terminate()
        fake.wait()
    best = {c: min(runs, key=lambda r: r["cpu_ms_per_invoke"]) for c, runs in results.items()}
    print(f"{'client':8} {'CPU ms/invoke':>14} {'invokes/s':>10}")
    for client, run in best.items():
        print(f"{client:8} {run['cpu_ms_per_invoke']:14.3f} {run['invokes_per_s']:10.0f}")
    ratio = best["lean"]["cpu_ms_per_invoke"] / best["boto3"]["cpu_ms_per_invoke"]
    print(f"lean / boto3 CPU per invoke: {ratio:.2f}")
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"machine": machine, "runs": results, "ratio": ratio}, indent=2)
    )


if __name__ == "__main__":
    main()
