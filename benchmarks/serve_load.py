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

Prints the numbers and writes them as JSON. Exit status 1 if the server died, /api/info ever took
over 1 s, or the server's peak resident memory (VmHWM) exceeded the cap (or --max-memory-gb).
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
    side = int(info["max_pixels"] ** 0.5)
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    largest = buffer.getvalue()

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

    time.sleep(1)
    stop.set()
    poller.join()
    alive = server.poll() is None
    results.update(alive=alive, peak_mb=peak_mb(server.pid) if alive else None, cap_mb=cap,
                   info_latency_max_s=round(max(latencies), 3), info_requests=len(latencies))
    if alive:
        server.terminate()
        results["exit_status"] = server.wait(timeout=120)
    print(json.dumps(results, indent=2))
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if group is not None:
        group.rmdir()
    ok = (alive and results["info_latency_max_s"] <= 1.0 and results["peak_mb"] <= cap
          and results.get("exit_status") == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
