"""`flowsr serve` under hostile load, at its default limits: peak memory and /api/info latency.

    python3 benchmarks/serve_load.py [--model oftsr-x4] [--memory-cap-gb 2.5] [--json serve_load.json]

Starts `flowsr serve --model MODEL --model bicubic` with its default limits, optionally inside a memory
cgroup capped at --memory-cap-gb (cgroup v2 or v1, where this user may create one; otherwise the peak is
only measured), asks for /api/info every 0.1 s throughout, and runs, one after the other:

1. 40 uploads of the largest allowed size (--max-upload-mb), all sent at once, each holding back its
   last byte for --hold seconds (expected: at most 8 arrive, the rest get 503; memory stays flat);
2. the largest image within the limits (a random RGB PNG of --max-megapixels) through bicubic, to the end;
3. the same image through MODEL, cancelled with DELETE after --network-seconds (the accumulator and
   the noise bands are full width from the first row of tiles, so the peak is reached early);
4. one row of --max-megapixels pixels (expected: 413, the memory it would need).

With --hostile (issue 23), instead:

1. decoder bombs: --bombs rounds, a second apart, of TIFF uploads whose tags ask the decoder for far
   more than their declared image (the tester's 1000x1000 TIFF holding one 26752x26752 deflate tile,
   2.1 GB inflated; a million strip offsets; a tag of four million numbers) (expected: 415 each, memory flat);
2. trickling clients for --trickle-run seconds: 64 connections sending one request-header byte every
   --trickle-every seconds and 8 uploads sending one body byte as often, reconnecting when dropped,
   while a real upload (a small PNG) is tried every 2 s (expected: /api/info within 1 s, uploads accepted);
3. a burst of --burst uploads of the largest allowed image at once, through bicubic (expected: the queue
   takes what it can, the rest get 503, every accepted job completes).

It reports the peak resident memory, /api/info latency percentiles (p50, p90, p99, max), the jobs
accepted, refused and completed, and whether the server lived.

Prints the numbers and writes them as JSON. Exit status 1 if the server died, /api/info ever took
over 1 s, or the server's peak resident memory (VmHWM) exceeded the cap (or --max-memory-gb); with
--hostile also if a bomb was not refused or a real upload during the trickling was not accepted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def request(url: str, method: str = "GET", data: bytes | None = None, timeout: float = 60) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=timeout) as reply:
            body = reply.read()
            is_json = body and reply.headers["Content-Type"] == "application/json"
            return reply.status, json.loads(body) if is_json else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def peak_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MB; NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def memory_cgroup(limit: int) -> Path | None:
    """A new memory cgroup (v2, or v1) capped at ``limit`` bytes, or None where none can be made."""
    name = f"flowsr-serve-load-{os.getpid()}"
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    roots = [(Path(m[1]), "memory.max") for m in mounts if m[2] == "cgroup2"]
    roots += [(Path(m[1]), "memory.limit_in_bytes") for m in mounts if m[2] == "cgroup" and "memory" in m[3].split(",")]
    for root, limit_file in roots:
        group = root / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            if (group / limit_file).exists():  # the memory controller is enabled here
                (group / limit_file).write_text(str(limit))
                return group
        except OSError:
            pass
        group.rmdir()
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="the network model (default: the default bundled one)")
    parser.add_argument("--memory-cap-gb", type=float, default=2.5)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds the uploads are held")
    parser.add_argument("--network-seconds", type=float, default=60.0)
    parser.add_argument("--json", default="serve_load.json")
    parser.add_argument("--hostile", action="store_true", help="decoder bombs, trickling clients, a burst of uploads")
    parser.add_argument("--bombs", type=int, default=3, help="--hostile: rounds of decoder-bomb uploads")
    parser.add_argument("--trickle-run", type=float, default=130.0, help="--hostile: seconds of trickling clients")
    parser.add_argument("--trickle-every", type=float, default=30.0, help="--hostile: seconds between their bytes")
    parser.add_argument("--burst", type=int, default=12, help="--hostile: uploads of the largest image at once")
    args = parser.parse_args()

    group = memory_cgroup(int(args.memory_cap_gb * 2**30))

    def enter_group():  # in the child, before it runs: all its memory is charged to the group
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    server = subprocess.Popen([sys.executable, "-m", "flowsr", "serve", "--model", args.model, "--model", "bicubic",
                               "--port", "0"], stdout=subprocess.PIPE, text=True, preexec_fn=enter_group)
    line = server.stdout.readline()
    print(line.strip())
    url = line.split("open ")[1].split()[0].rstrip("/")
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    info = request(url + "/api/info")[1]
    limits = ("max_upload_bytes", "max_pixels", "max_memory_bytes", "job_memory_bytes")
    results = {"model": args.model, "cgroup_cap_gb": args.memory_cap_gb if group else None,
               "limits": {k: info[k] for k in limits}}
    cap = args.memory_cap_gb * 1024 if group else info["max_memory_bytes"] / 2**20

    latencies, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            start = time.monotonic()
            try:
                request(url + "/api/info", timeout=10)
                latencies.append(time.monotonic() - start)
            except OSError:
                latencies.append(float("inf"))
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    side = int(info["max_pixels"] ** 0.5)  # the largest image within the limits
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    largest = buffer.getvalue()

    if args.hostile:
        hostile(args, url, info, largest, results, server)
    else:
        normal(args, url, info, largest, results, server)

    time.sleep(1)
    stop.set()
    poller.join()
    alive = server.poll() is None
    finite = sorted(x for x in latencies if x != float("inf"))
    results.update(alive=alive, peak_mb=peak_mb(server.pid) if alive else None, cap_mb=cap,
                   info_latency_max_s=round(max(latencies), 3), info_requests=len(latencies),
                   info_latency_s={f"p{q}": round(finite[min(len(finite) - 1, len(finite) * q // 100)], 3)
                                   for q in (50, 90, 99)} if finite else {},
                   info_failed=len(latencies) - len(finite))
    if alive:
        server.terminate()
        results["exit_status"] = server.wait(timeout=120)
    print(json.dumps(results, indent=2))
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if group is not None:
        group.rmdir()
    ok = (alive and results["info_latency_max_s"] <= 1.0 and results["peak_mb"] <= cap
          and results.get("exit_status") == 0)
    if args.hostile:
        ok = ok and results["bombs"]["refused"] == results["bombs"]["sent"] and \
            results["trickling"]["real_uploads_refused"] == 0
    return 0 if ok else 1


def normal(args, url: str, info: dict, largest: bytes, results: dict, server) -> None:
    """The default run: held uploads, the largest image through bicubic and the network, one row."""
    side = int(info["max_pixels"] ** 0.5)
    # 1. held uploads
    parts = urllib.parse.urlsplit(url)
    size = info["max_upload_bytes"]
    payload = os.urandom(size - 1)
    sockets, refused = [], 0
    for index in range(args.uploads):
        connection = socket.create_connection((parts.hostname, parts.port), timeout=30)
        sockets.append(connection)
        try:
            connection.sendall(f"POST /api/jobs?model=bicubic&name=held{index}.png HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                               f"Content-Length: {size}\r\n\r\n".encode() + payload)
        except OSError:
            refused += 1
    time.sleep(args.hold)
    results["held_uploads"] = {"count": args.uploads, "mb_each": size / 2**20, "refused_while_sending": refused,
                               "peak_mb": peak_mb(server.pid)}
    for connection in sockets:
        connection.close()

    # 2. the largest image through bicubic
    start = time.monotonic()
    status, reply = request(f"{url}/api/jobs?model=bicubic&name=largest.png", "POST", largest)
    state = {}
    while status == 202 and state.get("state") not in ("done", "error"):
        time.sleep(0.5)
        state = request(f"{url}/api/jobs/{reply['id']}")[1]
    results["largest_bicubic"] = {"side": side, "status": status, "state": state.get("state"),
                                  "seconds": round(time.monotonic() - start, 1), "tile": state.get("tile"),
                                  "estimate_mb": state.get("memory_estimate", 0) / 2**20,
                                  "peak_mb": peak_mb(server.pid)}

    # 3. the same through the network, cancelled after a while
    model = info["models"][0]["name"]
    status, reply = request(f"{url}/api/jobs?model={urllib.parse.quote(model)}&name=largest.png", "POST", largest)
    state = request(f"{url}/api/jobs/{reply['id']}")[1] if status == 202 else reply
    deadline = time.monotonic() + args.network_seconds
    while status == 202 and time.monotonic() < deadline and state.get("state") not in ("done", "error"):
        time.sleep(0.5)
        state = request(f"{url}/api/jobs/{reply['id']}")[1]
    if status == 202:
        request(f"{url}/api/jobs/{reply['id']}", "DELETE")
    results["largest_network"] = {"model": model, "status": status, "state": state.get("state"),
                                  "tile": state.get("tile"), "tiles_done": state.get("tiles_done"),
                                  "tiles_total": state.get("tiles_total"),
                                  "estimate_mb": state.get("memory_estimate", 0) / 2**20,
                                  "peak_mb": peak_mb(server.pid)}

    # 4. a row of max_pixels pixels
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1, info["max_pixels"], 3), np.uint8)).save(buffer, "PNG")
    status, reply = request(f"{url}/api/jobs?model=bicubic&name=row.png", "POST", buffer.getvalue())
    results["one_row"] = {"status": status, "error": reply.get("error")}


def decoder_bombs() -> dict[str, bytes]:
    """TIFF files whose tags ask the decoder for far more memory than their declared image."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import deflate_zeros, tiff_bytes

    return {"tile_26752.tif": tiff_bytes(1000, 1000, deflate_zeros(26752 * 26752 * 3), tile=(26752, 26752)),
            "strips.tif": tiff_bytes(1000, 1000, bytes(3000), rows_per_strip=1, compression=1, chunks=1_000_000),
            "tag.tif": tiff_bytes(100, 100, deflate_zeros(30000), extra=[(320, 3, 4_000_000, 8)])}


def hostile(args, url: str, info: dict, largest: bytes, results: dict, server) -> None:
    """Decoder bombs, trickling clients, a burst of the largest uploads (see the module's docstring)."""
    parts = urllib.parse.urlsplit(url)
    # 1. decoder bombs, a second apart
    bombs, codes = decoder_bombs(), []
    for _ in range(args.bombs):
        for name, data in bombs.items():
            status, reply = request(f"{url}/api/jobs?model=bicubic&name={name}", "POST", data)
            codes.append(status)
            time.sleep(1)
    results["bombs"] = {"files": {name: len(data) for name, data in bombs.items()}, "sent": len(codes),
                        "refused": sum(code in (413, 415) for code in codes), "statuses": sorted(set(codes)),
                        "example_error": reply.get("error"), "peak_mb": peak_mb(server.pid)}

    # 2. trickling clients; a real upload every 2 s
    stop, lock, dropped = threading.Event(), threading.Lock(), [0]
    head = (f"POST /api/jobs?model=bicubic&name=slow.png HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Length: 1000000\r\n\r\n")

    def trickler(first: bytes, byte: bytes):
        while not stop.is_set():
            try:
                with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
                    connection.sendall(first)
                    while not stop.wait(args.trickle_every):
                        connection.sendall(byte)
                        connection.settimeout(0.0)
                        try:
                            if connection.recv(1) == b"":
                                raise OSError("closed")
                        except BlockingIOError:
                            pass
                        connection.settimeout(10)
            except OSError:
                with lock:
                    dropped[0] += 1
                stop.wait(0.5)

    threads = [threading.Thread(target=trickler, args=(b"P", b"O"), daemon=True) for _ in range(64)]
    threads += [threading.Thread(target=trickler, args=(head.encode() + b"x", b"x"), daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    small = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(small, "PNG")
    accepted, refused, started = 0, 0, time.monotonic()
    time.sleep(2)
    while time.monotonic() - started < args.trickle_run:
        status, _ = request(f"{url}/api/jobs?model=bicubic&name=real.png", "POST", small.getvalue(), timeout=10)
        accepted, refused = accepted + (status == 202), refused + (status != 202)
        time.sleep(2)
    stop.set()
    results["trickling"] = {"connections": 64, "uploads": 8, "seconds": args.trickle_run,
                            "byte_every_s": args.trickle_every, "dropped_by_the_server": dropped[0],
                            "real_uploads_accepted": accepted, "real_uploads_refused": refused,
                            "peak_mb": peak_mb(server.pid)}

    # 3. a burst of the largest allowed uploads at once, through bicubic
    replies = []

    def upload(index: int):
        replies.append(request(f"{url}/api/jobs?model=bicubic&name=burst{index}.png", "POST", largest, timeout=120))

    burst = [threading.Thread(target=upload, args=(index,)) for index in range(args.burst)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join()
    ids = [reply["id"] for status, reply in replies if status == 202]
    states = {}
    deadline = time.monotonic() + 60 * max(1, len(ids))
    while time.monotonic() < deadline and len(states) < len(ids):
        for job in ids:
            state = request(f"{url}/api/jobs/{job}")[1].get("state")
            if state in ("done", "error"):
                states[job] = state
        time.sleep(1)
    results["burst"] = {"uploads": args.burst, "mb_each": len(largest) / 2**20, "accepted": len(ids),
                        "refused": len(replies) - len(ids),
                        "refusals": sorted({reply.get("error", "")[:80] for status, reply in replies if status != 202}),
                        "completed": sum(state == "done" for state in states.values()),
                        "failed": sum(state == "error" for state in states.values()), "peak_mb": peak_mb(server.pid)}


if __name__ == "__main__":
    sys.exit(main())
