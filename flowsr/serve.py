"""``flowsr serve``: a local web page to try the models, built on the standard library only.

    flowsr serve [--model M ...] [--host 127.0.0.1] [--port 7860] [--max-upload-mb 50] [--max-megapixels 40]

The page (``flowsr/static/``: plain HTML, CSS and JavaScript, nothing fetched from the internet) uploads
an image, picks the model, the steps and the fidelity–realism knob ``t``, polls the job until it is
done, and shows the result beside the input with a comparison slider, zoom, the time taken and the NFE.

HTTP API (JSON unless noted; errors are ``{"error": "<one line>"}`` with a 4xx/5xx status):

- ``GET /api/info``: models (name, kind, scale, defaults, which knobs apply) and the upload limits.
- ``POST /api/jobs?model=M&steps=N&t=T&seed=S&name=FILE`` with the image file as the raw body:
  ``202 {"id": ...}``; 400 bad settings, 413 too large, 415 not an image / corrupt, 503 queue full.
- ``GET /api/jobs/ID``: state (queued | running | done | error), queue position, tile progress,
  seconds, NFE, sizes.  ``GET /api/jobs/ID/result[?download=1]``: the PNG.  ``DELETE /api/jobs/ID``.

One worker thread runs the jobs in order, so concurrent users share each model safely. Uploads are
decoded in memory; the PNG is encoded in a ``tempfile.TemporaryDirectory`` deleted right after. The
result keeps the input's mode (greyscale, alpha, 16-bit), as ``flowsr upscale`` writes it, and the
same file name and seed give the same pixels as ``flowsr upscale --seed S``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import queue
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/style.css": ("style.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                               "object-src 'none'; frame-ancestors 'none'"}
MAX_STEPS = 256
DRAIN_LIMIT = 1 << 30  # an oversized body up to this is read and dropped, so the client sees the 413


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP code, the message one line for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class Job:
    """One upload: queued, then run by the worker; ``result`` holds the PNG bytes once done."""

    id: str
    name: str
    model: str
    settings: object  # flowsr.pipeline.Settings
    seed: int
    image: object | None  # flowsr.io.Image until the worker has used it
    state: str = "queued"  # queued | running | done | error
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    tiles_done: int = 0
    tiles_total: int = 0
    result: bytes | None = None
    info: dict = field(default_factory=dict)
    error: str | None = None


class App:
    """The models, the job queue and its single worker thread; the HTTP handler only calls these methods.

    ``models``: display name -> :class:`flowsr.pipeline.Upscaler` (the first is the page's default).
    ``max_pixels``: largest accepted input in pixels; ``tile``: LR tile size for large inputs (0: none).
    At most ``max_queue`` jobs, and ``2 * max_pixels`` pixels (decoded images are held in memory), wait;
    the newest ``keep`` finished jobs are kept for ``keep_seconds``; two uploads are decoded at a time.
    """

    def __init__(self, models: dict, max_upload_bytes: int = 50 << 20, max_pixels: int = 40_000_000,
                 tile: int = 256, tile_overlap: int = 16, max_queue: int = 32, keep: int = 32,
                 keep_seconds: float = 1800.0, log=None):
        self.models = models
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.tile, self.tile_overlap = tile, tile_overlap
        self.max_queue, self.keep, self.keep_seconds = max_queue, keep, keep_seconds
        self.log = log or (lambda message: None)
        self.jobs: dict[str, Job] = {}  # insertion order = submission order
        self.lock = threading.Lock()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.decoding = threading.Semaphore(2)
        self.stopping = False
        self.worker = threading.Thread(target=self._work, name="flowsr-serve-worker", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> App:
        self.worker.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the running job (waiting up to ``timeout`` s), drop the queued ones."""
        self.stopping = True
        self.queue.put(None)
        self.worker.join(timeout)

    # -- what the page asks ----------------------------------------------------------------------
    def info(self) -> dict:
        models = []
        for name, model in self.models.items():
            kind = _kind(model)
            cfg = model.config
            models.append({"name": name, "kind": kind, "scale": model.scale,
                           "default_steps": cfg.default_steps if cfg else 1,
                           "default_t": cfg.default_t if cfg else 1.0,
                           "steps": kind in ("flow", "meanflow"),  # the knobs the page enables
                           "t": kind in ("oftsr", "meanflow")})
        return {"models": models, "max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_steps": MAX_STEPS, "tile": self.tile}

    def submit(self, data: bytes, params: dict[str, str]) -> Job:
        """Check the settings, decode the upload and queue it; raises RequestError (4xx/503)."""
        from flowsr.io import ImageReadError, read_image_bytes
        from flowsr.pipeline import Settings

        name = "".join(c if c.isprintable() else "_" for c in Path(params.get("name") or "").name[:200])
        name = name or "image"
        model_name = params.get("model") or next(iter(self.models))
        if model_name not in self.models:
            raise RequestError(400, f"unknown model {model_name!r} (this server has: {', '.join(self.models)})")
        model = self.models[model_name]
        steps = _number(params, "steps", int)
        t = _number(params, "t", float)
        seed = _number(params, "seed", int) or 0
        if steps is not None and steps > MAX_STEPS:
            raise RequestError(400, f"steps must be at most {MAX_STEPS}, got {steps}")
        if not 0 <= seed < 2**63:
            raise RequestError(400, f"seed must be in [0, 2^63), got {seed}")
        settings = Settings(steps=steps, t=t)
        try:
            model.resolve(settings)
        except ValueError as error:
            raise RequestError(400, str(error)) from error
        busy = RequestError(503, "the queue is full; try again in a moment")
        if self._waiting()[0] >= self.max_queue:
            raise busy
        try:
            with self.decoding:
                image = read_image_bytes(data, name, max_pixels=self.max_pixels)
        except ImageReadError as error:
            message = str(error).replace("(pass --allow-large to override)",
                                         "(the server's limit is flowsr serve --max-megapixels)")
            status = 413 if "too large" in message else 415
            raise RequestError(status, message) from error
        job = Job(secrets.token_hex(8), name, model_name, settings, seed, image)
        job.info = {"input": _describe(image)}
        with self.lock:
            count, pixels = self._waiting(locked=True)
            if count >= self.max_queue or (count and pixels + _pixels(image) > 2 * self.max_pixels):
                raise busy
            self._expire()
            self.jobs[job.id] = job
        self.queue.put(job)
        self.log(f"job {job.id}: {name} {job.info['input']['width']}x{job.info['input']['height']} "
                 f"queued for {model_name}")
        return job

    def status(self, job_id: str) -> dict:
        job = self._job(job_id)
        now = time.monotonic()
        with self.lock:
            ahead = sum(1 for other in self.jobs.values()
                        if other.state == "queued" and other.created < job.created)
            running = any(other.state == "running" for other in self.jobs.values())
        status = {"id": job.id, "state": job.state, "name": job.name, "model": job.model,
                  "steps": job.settings.steps, "t": job.settings.t, "seed": job.seed,
                  "tiles_done": job.tiles_done, "tiles_total": job.tiles_total, **job.info}
        if job.state == "queued":
            status["position"] = ahead + int(running) + 1  # 1: next to run
        if job.started is not None:
            status["elapsed"] = round((job.finished or now) - job.started, 3)
        status["waited"] = round((job.started or now) - job.created, 3)
        if job.error:
            status["error"] = job.error
        return status

    def result(self, job_id: str) -> tuple[bytes, str]:
        """The result PNG and a download name, e.g. ``photo_x4.png``."""
        job = self._job(job_id)
        if job.state != "done" or job.result is None:
            raise RequestError(409, f"job {job_id} is {job.state}, it has no result" +
                               (f": {job.error}" if job.error else ""))
        stem = Path(job.name).stem.lstrip(".") or "image"
        return job.result, f"{stem}_x{self.models[job.model].scale}.png"

    def delete(self, job_id: str) -> None:
        job = self._job(job_id)
        with self.lock:
            self.jobs.pop(job.id, None)
            job.image = job.result = None  # a queued job is skipped by the worker

    # -- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self.queue.get()) is not None and not self.stopping:
            if job.image is None:  # deleted while queued
                continue
            try:
                self._process(job)
            except Exception as error:  # one bad job (e.g. out of memory) must not stop the server
                job.error = " ".join(f"{type(error).__name__}: {error}".split())[:500]
                job.state = "error"
                self.log(f"job {job.id}: failed: {job.error}")
            finally:
                job.image = None
                job.finished = time.monotonic()

    def _process(self, job: Job) -> None:
        from flowsr.io import save_image
        from flowsr.pipeline import image_seed

        model, image = self.models[job.model], job.image
        if image is None:  # deleted just now
            return
        job.started, job.state = time.monotonic(), "running"
        height, width = image.rgb.shape[-2:]
        job.tiles_total = _tile_count(height, self.tile, self.tile_overlap) * _tile_count(
            width, self.tile, self.tile_overlap)
        settings = model.resolve(job.settings)
        with _count_passes(model, job):
            result = model.upscale_image(image, job.settings, seed=image_seed(job.seed, job.name),
                                         tile=self.tile, tile_overlap=self.tile_overlap)
        seconds = time.monotonic() - job.started
        with tempfile.TemporaryDirectory(prefix="flowsr-serve-") as folder:
            job.result = save_image(Path(folder) / "result.png", result).read_bytes()
        knob = _kind(model) == "oftsr" or (_kind(model) == "meanflow" and settings.steps == 1)
        job.info.update(output=_describe(result), seconds=round(seconds, 3), nfe=model.nfe(settings),
                        steps=settings.steps, t=settings.t if knob else None,
                        png_bytes=len(job.result), notes=list(image.notes))
        job.settings = settings
        job.state = "done"
        self.log(f"job {job.id}: {job.name} -> {result.rgb.shape[-1]}x{result.rgb.shape[-2]} with "
                 f"{job.model}, NFE {job.info['nfe']}, {seconds:.2f} s")

    # -- helpers ---------------------------------------------------------------------------------
    def _job(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(404, f"no job {job_id!r} (finished jobs are kept {self.keep_seconds / 60:g} min)")
        return job

    def _waiting(self, locked: bool = False) -> tuple[int, int]:
        """(jobs, pixels) waiting in the queue."""
        with contextlib.nullcontext() if locked else self.lock:
            sizes = [_pixels(job.image) for job in self.jobs.values()
                     if job.state == "queued" and job.image is not None]
        return len(sizes), sum(sizes)

    def _expire(self) -> None:
        """Drop finished jobs beyond the newest ``keep`` or older than ``keep_seconds`` (lock held)."""
        finished = [job for job in self.jobs.values() if job.state in ("done", "error")]
        now = time.monotonic()
        for index, job in enumerate(reversed(finished)):
            if index >= self.keep or now - (job.finished or now) > self.keep_seconds:
                self.jobs.pop(job.id, None)


def _kind(model) -> str:
    return model.config.kind if model.config is not None else "bicubic"


def _pixels(image) -> int:
    return int(image.rgb.shape[-1] * image.rgb.shape[-2])


def _number(params: dict[str, str], key: str, kind):
    text = (params.get(key) or "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise RequestError(400, f"{key} must be {'an integer' if kind is int else 'a number'}, "
                                f"got {text[:40]!r}") from None


def _describe(image) -> dict:
    """Size and mode of an :class:`flowsr.io.Image` for the page, e.g. ``RGBA 8-bit``."""
    channels = image.rgb.shape[0] + (image.alpha is not None)
    mode = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}[channels]
    return {"width": int(image.rgb.shape[-1]), "height": int(image.rgb.shape[-2]),
            "mode": f"{mode} {image.bit_depth}-bit"}


def _tile_count(size: int, tile: int, overlap: int) -> int:
    """How many tiles :meth:`flowsr.pipeline.Upscaler.upscale_tensor` runs along one side."""
    from flowsr.pipeline import _tile_starts

    if not tile:
        return 1
    return len(_tile_starts(size, tile, max(0, min(overlap, tile // 2))))


@contextlib.contextmanager
def _count_passes(model, job: Job):
    """Count finished tiles in ``job.tiles_done`` (the pipeline has no progress hook; this wraps its
    per-tile ``_run`` on this instance only, which just the worker thread uses)."""
    run = getattr(model, "_run", None)
    if run is None:
        yield
        return

    def counted(*args, **kwargs):
        out = run(*args, **kwargs)
        job.tiles_done += 1
        return out

    model._run = counted
    try:
        yield
    finally:
        del model._run


# -- HTTP ------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the :class:`App` in ``self.server.app``; every error is a JSON 4xx/5xx."""

    server_version = "flowsr-serve"
    timeout = 120  # seconds a stalled connection may hold a thread

    def do_GET(self):
        self._handle(self._get)

    def do_HEAD(self):
        self._handle(self._get)

    def do_POST(self):
        self._handle(self._post)

    def do_DELETE(self):
        self._handle(self._delete)

    def _handle(self, route) -> None:
        try:
            self._check_host()
            route(urllib.parse.urlsplit(self.path))
        except RequestError as error:
            self._json({"error": str(error)}, error.status)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as error:  # a bug must cost one request, not the server
            self.server.app.log(f"internal error on {self.command} {self.path}: {error!r}")
            with contextlib.suppress(OSError):
                self._json({"error": f"internal error: {type(error).__name__}: {error}"}, 500)

    def _get(self, url) -> None:
        app = self.server.app
        if url.path in STATIC_FILES:
            name, content_type = STATIC_FILES[url.path]
            self._send((STATIC_DIR / name).read_bytes(), content_type, {"Cache-Control": "no-cache"})
        elif url.path == "/api/info":
            self._json(app.info())
        elif url.path == "/favicon.ico":
            self._send(b"", "image/x-icon", status=204)
        elif (job_id := _job_path(url.path)) is not None:
            self._json(app.status(job_id))
        elif (job_id := _job_path(url.path, "/result")) is not None:
            data, filename = app.result(job_id)
            download = urllib.parse.parse_qs(url.query).get("download") == ["1"]
            headers = {"Cache-Control": "private, max-age=3600"}
            if download:
                headers["Content-Disposition"] = f'attachment; filename="{_quote_name(filename)}"'
            self._send(data, "image/png", headers)
        else:
            raise RequestError(404, f"not found: {url.path}")

    def _post(self, url) -> None:
        if url.path != "/api/jobs":
            raise RequestError(404, f"not found: {url.path}")
        app = self.server.app
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        job = app.submit(self._body(app.max_upload_bytes), params)
        self._json({"id": job.id, "status": f"/api/jobs/{job.id}"}, 202)

    def _delete(self, url) -> None:
        job_id = _job_path(url.path)
        if job_id is None:
            raise RequestError(404, f"not found: {url.path}")
        self.server.app.delete(job_id)
        self._send(b"", "text/plain", status=204)

    # -- request and response plumbing -----------------------------------------------------------
    def _check_host(self) -> None:
        """On a loopback address, accept only loopback Host/Origin headers (against DNS rebinding)."""
        if not self.server.loopback:
            return
        host = urllib.parse.urlsplit("//" + (self.headers.get("Host") or "")).hostname
        origin = self.headers.get("Origin")
        origin_host = urllib.parse.urlsplit(origin).hostname if origin and origin != "null" else None
        for name in (host, origin_host):
            if name is not None and not _is_loopback(name):
                raise RequestError(403, f"host {name!r} refused: this server only answers on its loopback address")

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "send the image as the request body with a Content-Length")
        try:
            length = int(length)
        except ValueError:
            raise RequestError(400, "bad Content-Length") from None
        if length < 0:
            raise RequestError(400, "bad Content-Length")
        if length > limit:
            self._drain(length)
            raise RequestError(413, f"file too large: {length / 2**20:.1f} MB > limit {limit / 2**20:g} MB "
                                    "(the server's limit is flowsr serve --max-upload-mb)")
        chunks, left = [], length
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                raise RequestError(400, f"upload cut short: got {length - left} of {length} bytes")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _drain(self, length: int) -> None:
        """Read and drop an oversized body (so the client reads our answer), or close if absurdly large."""
        self.close_connection = True
        if length > DRAIN_LIMIT:
            return
        with contextlib.suppress(OSError):
            while length > 0 and (chunk := self.rfile.read(min(length, 1 << 20))):
                length -= len(chunk)

    def _json(self, payload: dict, status: int = 200) -> None:
        self._send(json.dumps(payload).encode(), "application/json", {"Cache-Control": "no-store"}, status)

    def _send(self, data: bytes, content_type: str, headers: dict | None = None, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def log_request(self, code="-", size="-"):
        if self.server.verbose or (isinstance(code, int) and code >= 400):
            self.server.app.log(f'{self.command} {self.path.split("?")[0]} -> {int(code)}')


class Server(ThreadingHTTPServer):
    """A threading HTTP server holding the :class:`App`; handler threads are daemons."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 resets connections when many users arrive at once

    def __init__(self, address: tuple[str, int], app: App, verbose: bool = False):
        self.app, self.verbose = app, verbose
        self.loopback = _is_loopback(address[0])
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _job_path(path: str, suffix: str = "") -> str | None:
    """The job id in ``/api/jobs/ID{suffix}``, or None."""
    prefix = "/api/jobs/"
    if not (path.startswith(prefix) and path.endswith(suffix)):
        return None
    job_id = path[len(prefix):len(path) - len(suffix)]
    return job_id if job_id and job_id.isalnum() else None


def _quote_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._- " else "_" for c in name)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- command line ----------------------------------------------------------------------------------


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def add_parser(subparsers):
    """Add ``serve`` to the ``flowsr`` command's subparsers; returns the new parser."""
    parser = subparsers.add_parser("serve", help="a local web page to try the models",
                                   description="Serve a local web page to upscale images with the models.")
    parser.add_argument("--model", action="append", default=None, metavar="M",
                        help="model directory, bundled name or 'bicubic'; repeat for several "
                             "(default: the default model and bicubic)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, "
                        "this machine only; 0.0.0.0 exposes the page to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload in MB")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest input image in megapixels")
    parser.add_argument("--tile", type=int, default=256, help="LR tile size for large images (0: no tiling)")
    parser.add_argument("--tile-overlap", type=int, default=16, help="LR overlap between tiles")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    parser.set_defaults(handler=run)
    return parser


def run(args) -> int:
    """Load the models, then serve until Ctrl-C. Returns the exit status."""
    from flowsr.checkpoint import ModelLoadError
    from flowsr.pipeline import default_model, load

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    specs = list(dict.fromkeys(args.model or [default_model(), "bicubic"]))
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        print("error: --max-upload-mb and --max-megapixels must be positive", file=sys.stderr)
        return 2
    models = {}
    try:
        for spec in specs:
            model = load(spec, device=args.device, dtype=args.dtype)
            name = model.name if model.name not in models else f"{model.name} ({spec})"
            models[name] = model
    except (ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    app = App(models, max_upload_bytes=int(args.max_upload_mb * 2**20),
              max_pixels=int(args.max_megapixels * 1e6), tile=args.tile, tile_overlap=args.tile_overlap, log=log)
    try:
        server = Server((args.host, args.port), app, verbose=args.verbose)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    app.start()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C: no job half-written
        signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (a shell's `&`)
    if not server.loopback:
        log(f"warning: listening on {args.host}: anyone who can reach this machine can use the page")
    device = next(iter(models.values())).device
    print(f"flowsr serve: {', '.join(models)} on {device}; open {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log("stopping")
    finally:
        server.server_close()
        app.stop()
    return 0
