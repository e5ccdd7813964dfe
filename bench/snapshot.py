"""A signed 100k-user snapshot pulled over mutual TLS while decisions keep running.

A child process serves the new version of ``bench decision``'s site (signed, gzip, over HTTPS
with a client certificate from the test PKI, as the fake cloud does); this process runs a whole
gateway holding the previous version and pulls the snapshot with the gateway's own
``SnapshotPuller``. The new version has the same entities (a snapshot rewrites everything
whatever changed: the cost does not depend on it). A second child process stands for a card reader: every ``--interval-ms`` it
writes its clock (CLOCK_MONOTONIC, shared by every process) into a pipe that the gateway's event
loop watches, and each arrival is decided at once against ``cache.view``.

Two times are kept per presentation: the call (lookup and ``access.decide``, as
``bench decision`` times it) and the response, from the presentation's arrival to its decision,
which is the call plus however long the event loop could not run: a loop blocked by the pull
shows there and nowhere else. ``apply_s`` runs from the start of the pull to the new view being
served; ``peak_rss_mb`` is the process's high-water mark (reset just before the pull).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stats import percentile

#: Serves until its standard input closes; prints "READY <port> <bytes> <gzip bytes>".
SERVER_MODULE = "bench.snapshot"
GATEWAY_ID = "gw-1"
BEFORE_S = 2.0  # deciding on the old site before the pull starts
AFTER_S = 0.5  # and on the new one after it is served
#: The reader: its clock into the pipe every period, until the pipe closes.
PRESENTER = """
import os, sys, time
period = float(sys.argv[1])
due = time.perf_counter()
while True:
    due += period
    delay = due - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    try:
        os.write(1, time.perf_counter_ns().to_bytes(8, "little"))
    except (BrokenPipeError, OSError):
        break
"""


def status_kb(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux 4.0+: ``5`` to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


# --- the cloud's side (child process) -----------------------------------------------------------


def serve_main(argv: list[str]) -> int:
    """Child: build the new site's snapshot, sign it, serve it until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m bench.snapshot")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--rules", type=int, required=True)
    parser.add_argument("--doors", type=int, required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--public-key", type=Path, required=True)
    args = parser.parse_args(argv)
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bench.decision import free_port
    from bench.sitegen import site_json
    from gateway.signing import public_key_pem, signature_header

    # The same site as the one the gateway holds (same seed), at a newer version.
    data = site_json(args.users, 3, args.rules, args.doors, 500, 1)
    data["version"] = args.version
    data["site"]["name"] = f"Benchmark site v{args.version}"
    body = json.dumps(data).encode()
    del data
    key = Ed25519PrivateKey.generate()
    args.public_key.write_bytes(public_key_pem(key.public_key()))
    signature = signature_header(key, body)
    packed = gzip.compress(body, compresslevel=6)
    etag = f'"v{args.version}"'

    async def snapshot(request: web.Request) -> web.StreamResponse:
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        headers = {
            "ETag": etag,
            "Content-Type": "application/json",
            "X-Luckey-Signature": signature,
        }
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=packed, headers=headers)
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/gateways/{gateway}/snapshot", snapshot)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(args.ca))
    context.load_cert_chain(str(args.cert), str(args.key))
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as the contract says
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    print(f"READY {port} {len(body)} {len(packed)}", flush=True)
    await asyncio.to_thread(sys.stdin.buffer.read)  # until the parent closes it
    await runner.cleanup()
    return 0


# --- the gateway's side -------------------------------------------------------------------------


#: What the gateway logged during the pull, with the bench's clock: where the time went.
Phases = list[tuple[float, str]]


def capture_logs(phases: Phases, start: Callable[[], float]) -> Callable[[], None]:
    """Record the gateway's INFO lines (with the time since ``start()``) into ``phases``."""

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            phases.append((time.perf_counter() - start(), record.getMessage()))

    handler = Handler(logging.INFO)
    logger = logging.getLogger("gateway")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    def remove() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    return remove


class Cloud:
    """The snapshot server (a child process) and what the gateway needs to reach it."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from tests.cloud.broker import make_pki

        self.pki = make_pki(workdir / "pki", (GATEWAY_ID,))
        self.public_key_file = workdir / "cloud-signing.pub"
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", SERVER_MODULE,
                "--users", str(args.users), "--rules", str(args.rules), "--doors", str(args.doors),
                "--version", "2", "--ca", str(self.pki.ca_cert), "--cert", str(self.pki.server.cert),
                "--key", str(self.pki.server.key), "--public-key", str(self.public_key_file),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.port = self.body_bytes = self.gzip_bytes = 0

    def wait_ready(self) -> None:
        """Wait until the child serves; note its port and the snapshot's sizes."""
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if not ready.startswith("READY "):
            raise RuntimeError(f"snapshot server did not start: {ready!r}")
        self.port, self.body_bytes, self.gzip_bytes = (int(x) for x in ready.split()[1:])

    def ssl_context(self) -> ssl.SSLContext:
        """The gateway's side of mutual TLS, as ``gateway.cloud.tls_context`` makes it."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        identity = self.pki.identity(GATEWAY_ID)
        context.load_cert_chain(str(identity.cert), str(identity.key))
        return context

    def stop(self) -> None:
        """Close the child's stdin (it stops serving) and wait for it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def old_site(args: argparse.Namespace, state_dir: Path) -> None:
    """The version the gateway holds before the pull, generated in a child process."""
    db = state_dir / "cache.db"
    if args.db is not None and args.db.exists():
        shutil.copy(args.db, db)
        return
    subprocess.run(
        [
            sys.executable, "-m", "bench.sitegen", "--out", str(db), "--users", str(args.users),
            "--rules", str(args.rules), "--doors", str(args.doors),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    if args.db is not None:
        shutil.copy(db, args.db)


async def measure(args: argparse.Namespace, cloud: Cloud, state_dir: Path) -> dict[str, Any]:
    """Start the gateway on the old site and pull the new one while deciding."""
    from bench.decision import gateway_config, presentations
    from gateway import access, credentials
    from gateway.app import Gateway
    from gateway.memory import release_free_memory
    from gateway.model import CredentialKind, DoorMode
    from gateway.signing import load_public_key
    from gateway.snapshots import SnapshotPuller

    gateway = Gateway(gateway_config(state_dir))
    await gateway.start()
    cache = gateway.cache
    version_before = cache.version
    puller = SnapshotPuller(
        cache,
        gateway.events,
        url=f"https://localhost:{cloud.port}/v1/gateways/{GATEWAY_ID}/snapshot",
        ssl_context=cloud.ssl_context(),
        public_key=load_public_key(cloud.public_key_file),
        spool_dir=state_dir,
        clock=lambda: datetime.now(UTC),
    )
    samples = presentations(cache, 20_000, seed=7)
    gc.collect()
    await asyncio.to_thread(release_free_memory)
    rss_before = status_kb("VmRSS")

    # Each arrival: (arrival ns, response ns, call ns).
    arrivals, responses, calls = array("q"), array("q"), array("q")
    verifiers = credentials.DEFAULT_VERIFIERS
    clock = time.perf_counter_ns
    pending = bytearray()
    served_at: list[int] = []
    cache.add_listener(lambda view: served_at.append(clock()))

    read_fd, write_fd = os.pipe()
    presenter = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRESENTER, str(args.interval_ms / 1000), stdout=write_fd
    )
    os.close(write_fd)
    os.set_blocking(read_fd, False)

    def on_arrivals() -> None:
        try:
            pending.extend(os.read(read_fd, 1 << 16))
        except BlockingIOError:
            return
        whole = len(pending) - len(pending) % 8
        for offset in range(0, whole, 8):
            arrived = int.from_bytes(pending[offset : offset + 8], "little")
            presentation, at = samples[len(arrivals) % len(samples)]
            kind = presentation.kind
            t = clock()
            view = cache.view
            if kind is CredentialKind.NFC_UID:
                identity = credentials.verify(presentation, view.credential, verifiers)
            else:
                identity = credentials.assumed(view.credential(kind, presentation.value), kind)
            access.decide(identity, presentation.door_id, at, view, DoorMode.NORMAL)
            done = clock()
            arrivals.append(arrived)
            responses.append(done - arrived)
            calls.append(done - t)
        del pending[:whole]

    loop = asyncio.get_running_loop()
    phases: Phases = []
    started = [time.perf_counter()]
    remove_capture = capture_logs(phases, lambda: started[0])
    # Garbage collections during the pull: (start ns, generation, duration ns).
    collections: list[tuple[int, int, int]] = []
    gc_started = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = clock()
        else:
            collections.append((gc_started[0], info["generation"], clock() - gc_started[0]))

    gc.callbacks.append(on_gc)
    try:
        loop.add_reader(read_fd, on_arrivals)
        await asyncio.sleep(BEFORE_S)
        reset_peak_rss()
        started[0] = time.perf_counter()
        pull_start = clock()
        result = await puller.pull("bench")
        pull_end = clock()
        await asyncio.sleep(AFTER_S)
        peak_kb = status_kb("VmHWM")
    finally:
        loop.remove_reader(read_fd)
        os.close(read_fd)  # the presenter's next write fails: it stops
        remove_capture()
        gc.callbacks.remove(on_gc)
        await presenter.wait()

    for at_s, message in phases:
        print(f"  {at_s:7.3f} s  {message}", file=sys.stderr)
    swap = served_at[0] if served_at else pull_end
    gc.collect()
    await asyncio.to_thread(release_free_memory)
    rss_after = status_kb("VmRSS")
    counts = cache.view.counts()
    version_after = cache.version
    await gateway.stop()

    before = [i for i, a in enumerate(arrivals) if a < pull_start]
    during = [i for i, a in enumerate(arrivals) if pull_start <= a < pull_end]

    if args.trace:
        # Each stretch of late arrivals once: when it began and how late its first one was.
        last = -1
        for i in range(len(arrivals)):
            if arrivals[i] >= pull_start and responses[i] > 2_000_000 and arrivals[i] > last:
                print(
                    f"  late {(arrivals[i] - pull_start) / 1e9:7.3f} s  {responses[i] / 1e6:6.1f} ms",
                    file=sys.stderr,
                )
                last = arrivals[i] + responses[i]
        for at, generation, took in collections:
            if took > 2_000_000:
                print(
                    f"  gc{generation} {(at - pull_start) / 1e9:7.3f} s  {took / 1e6:6.1f} ms",
                    file=sys.stderr,
                )

    def us(values: list[int], q: float | None = 0.99) -> float:
        picked = percentile(values, q) if q is not None else max(values, default=0)
        return round(picked / 1000, 1)

    return {
        "users": counts["users"],
        "credentials": counts["credentials"],
        "rules": counts["rules"],
        "doors": counts["doors"],
        "result": str(result),
        "version_before": version_before,
        "version_after": version_after,
        "apply_s": round((swap - pull_start) / 1e9, 2),
        "pull_s": round((pull_end - pull_start) / 1e9, 2),
        "decisions_before": len(before),
        "decisions_during_apply": len(during),
        "decide_p99_before_us": us([responses[i] for i in before]),
        "decide_p99_during_apply_us": us([responses[i] for i in during]),
        "decide_max_during_apply_us": us([responses[i] for i in during], None),
        "decide_call_p99_before_us": us([calls[i] for i in before]),
        "decide_call_p99_during_apply_us": us([calls[i] for i in during]),
        "gc_max_ms_during_apply": round(
            max((took for at, _, took in collections if pull_start <= at < pull_end), default=0)
            / 1e6,
            1,
        ),
        "rss_before_mb": round(rss_before / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "rss_after_mb": round(rss_after / 1024, 1),
        "snapshot_mb": round(cloud.body_bytes / 2**20, 1),
        "download_mb": round(cloud.gzip_bytes / 2**20, 1),
    }


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench snapshot")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rules", type=int, default=2_000)
    parser.add_argument("--doors", type=int, default=50)
    parser.add_argument("--interval-ms", type=float, default=1.0, help="between presentations")
    parser.add_argument("--db", type=Path, help="reuse (or create) the old site's cache file")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="list on stderr when the loop fell behind and the collections that took over 2 ms",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
        workdir = Path(tmp)
        state_dir = workdir / "state"
        state_dir.mkdir(mode=0o700)
        t0 = time.perf_counter()
        cloud = Cloud(args, workdir)  # builds its snapshot while the old site is generated
        try:
            old_site(args, state_dir)
            cloud.wait_ready()
            print(f"sites generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            result = asyncio.run(measure(args, cloud, state_dir))
        finally:
            cloud.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_main(sys.argv[1:]))
