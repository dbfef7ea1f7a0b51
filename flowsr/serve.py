"""``flowsr serve``: a local web page to try the models, built on the standard library only.

    flowsr serve [--model M ...] [--host 127.0.0.1] [--port 7860] [--max-upload-mb 50]
                 [--max-megapixels 4] [--max-memory-gb 2]

The page (``flowsr/static/``: plain HTML, CSS and JavaScript, nothing fetched from the internet) uploads
an image, picks the model, the steps and the fidelity–realism knob ``t``, polls the job until it is
done, and shows the result beside the input with a comparison slider, zoom, the time taken and the NFE.

HTTP API (JSON unless noted; errors are ``{"error": "<one line>"}`` with a 4xx/5xx status):

- ``GET /api/info``: models (name, kind, scale, defaults, which knobs apply) and the limits.
- ``POST /api/jobs?model=M&steps=N&t=T&seed=S&name=FILE`` with the image file as the raw body:
  ``202 {"id": ...}``; 400 bad settings or headers, 403 another origin, 411 no Content-Length,
  413 too large (file, pixels, or the memory the job would need), 415 not an image / corrupt,
  503 busy (queue full, too many uploads or connections at once).
- ``GET /api/jobs/ID``: state (queued | running | done | error), queue position, tile progress,
  seconds, NFE, sizes, the tile used.  ``GET /api/jobs/ID/result[?download=1]``: the PNG.
  ``DELETE /api/jobs/ID``: forget the job; a running one stops at its next tile or network layer.

What no request can do (each is a test in ``tests/test_serve.py``, listed in RELIABILITY.md):

- **Exhaust memory.** Jobs stream like ``flowsr upscale`` (tiles, rows written to a PNG file as they
  finish). Before a job is accepted its peak memory is estimated (:mod:`flowsr.memory`); it must fit
  in ``--max-memory-gb`` beside the loaded models and the server's own buffers. Smaller tiles are
  taken when the automatic ones do not fit; what fits with none is refused with 413 and a sentence.
  Queued jobs are files on disk, not decoded images; one upload is decoded (checked) at a time.
- **Hold unbounded bytes.** Request bodies are streamed to files in 256 KiB chunks; at most
  ``max_uploads`` bodies are received at once and ``max_connections`` connections served.
- **Be held by slow clients.** A request's line and headers must arrive within 10 s; an upload (and a
  result's download) must average 16 KiB/s once 10 s old; a watchdog thread drops the others (408).
  A connection beyond ``max_connections`` takes the place of the one waiting longest for its headers or
  of one slower than that rate; an upload beyond ``max_uploads`` takes a slow upload's slot. Only when
  every place is held by a real request is the answer 503.
- **Be read two ways.** ``Host``, ``Origin`` or ``Content-Length`` given twice, ``Transfer-Encoding``,
  and HTTP/1.1 without ``Host`` are a 400; a request line or headers over 64 KiB a 431.
- **Act for a foreign page.** Only the page's own origin may call the API: a request whose
  ``Origin`` is not ``http://<Host>`` (``null`` included), or that a browser marks cross-site, is
  refused (403); on a loopback address the Host must be a loopback name too (against DNS
  rebinding). A malformed Host or Origin is a 400.
- **Outlive its cancellation.** ``DELETE`` and shutdown (SIGTERM, SIGINT) stop the running job at
  its next tile or network layer; the server then removes its temporary folder and exits 0.

The standard library, not uvicorn + starlette or aiohttp: each bound above is a few lines here (a
semaphore, a chunked read, a watchdog that shuts a slow connection's socket), the hard ones (memory,
cancellation, shutdown) live in the job worker whatever serves the HTTP, uvicorn has no minimum rate
for a request body, and the page keeps working offline with no dependency beyond flowsr's own.
Measured with ``benchmarks/serve_load.py --hostile`` (RELIABILITY.md).

One worker thread runs the jobs in order, so concurrent users share each model safely. The result
keeps the input's mode (greyscale, alpha, 16-bit), as ``flowsr upscale`` writes it, and the same
file name, seed and tile give the same pixels as ``flowsr upscale --seed S --tile T``.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import math
import os
import queue
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
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
CHUNK = 256 << 10  # bytes read or written at a time
DRAIN_LIMIT = 1 << 30  # a refused body up to this is read and dropped, so the client sees the answer
STALL_SECONDS = 60  # a connection that sends nothing this long is dropped
HEADER_SECONDS = 10  # a request's line and headers must arrive within this (from the connection or the last answer)
MIN_RATE = 16 << 10  # bytes/s an upload (or a result's download) must average once it is RATE_GRACE s old
RATE_GRACE = 10.0
WATCH_SECONDS = 0.25  # how often the watchdog looks at the connections
HEADER_BYTES = 64 << 10  # request line and headers together, at most (http.server alone allows 6.5 MB)
CONNECTION_BYTES = 1 << 20  # memory set aside per connection (thread stack, header and chunk buffers)
FOLDER_PREFIX = "flowsr-serve-"  # the server's temporary folder, in the system's temporary directory
LOCK_NAME = ".alive"  # held (flock) in that folder while the server lives
MIN_JOB_MEMORY = 128 << 20  # less room than this for a job: the server refuses to start
SMALLEST_TILE = 32  # tiles are halved down to this side to fit the memory budget


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP code, the message one line for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """Raised inside the worker at a tile or layer boundary when its job is deleted or the server stops."""


@dataclass(eq=False)
class Job:
    """One upload: queued as a file, then run by the worker into a PNG file ``result``."""

    id: str
    name: str
    model: str
    settings: object  # flowsr.pipeline.Settings
    seed: int
    upload: Path | None  # the uploaded file until the worker has decoded it
    tile: int = 0  # LR tile side the job runs with (0: whole image)
    state: str = "queued"  # queued | running | done | error | cancelled
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    tiles_done: int = 0
    tiles_total: int = 0
    result: Path | None = None
    info: dict = field(default_factory=dict)
    error: str | None = None
    cancelled: bool = False


class App:
    """The models, the job queue and its single worker thread; the HTTP handler only calls these methods.

    ``models``: display name -> :class:`flowsr.pipeline.Upscaler` (the first is the page's default).
    ``max_pixels``: largest accepted input in pixels. ``max_memory``: bytes the whole process may use;
    each job's estimate must fit in what is left beside ``baseline`` (the process's memory with the
    models loaded; measured when not given) and the buffers of uploads and connections.
    ``tile``: LR tile side, 0 automatic (as ``flowsr upscale --tile 0``), -1 never tile; tiles are
    halved (down to 32) while a job does not fit. At most ``max_queue`` jobs wait; at most
    ``max_uploads`` bodies are received and ``max_connections`` connections served at once. The newest
    ``keep`` finished jobs are kept for ``keep_seconds``, their PNGs up to ``keep_bytes`` in all.
    Files live in :attr:`folder`, a temporary folder removed by :meth:`stop`.
    """

    def __init__(self, models: dict, max_upload_bytes: int = 50 << 20, max_pixels: int = 4_000_000,
                 max_memory: int = 2 << 30, tile: int = 0, tile_overlap: int = 16, max_queue: int = 32,
                 max_uploads: int = 8, max_connections: int = 64, keep: int = 32, keep_seconds: float = 1800.0,
                 keep_bytes: int = 2 << 30, baseline: int | None = None, log=None):
        from flowsr import memory

        self.models = models
        self.max_upload_bytes, self.max_pixels, self.max_memory = max_upload_bytes, max_pixels, max_memory
        self.tile, self.tile_overlap = tile, tile_overlap
        self.max_queue, self.max_uploads, self.max_connections = max_queue, max_uploads, max_connections
        self.keep, self.keep_seconds, self.keep_bytes = keep, keep_seconds, keep_bytes
        self.log = log or (lambda message: None)
        self.baseline = _resident_bytes() if baseline is None else baseline
        # beside the running job: one upload being checked, the upload chunks, the connection threads
        self.reserve = (memory.decode_bytes(max_upload_bytes, max_pixels) + max_uploads * CHUNK
                        + max_connections * CONNECTION_BYTES)
        self.job_memory = max_memory - self.baseline - self.reserve
        if self.job_memory < MIN_JOB_MEMORY:
            raise ValueError(f"--max-memory-gb {max_memory / 2**30:g} leaves no room for a job: the loaded models "
                             f"take {_gb(self.baseline)} and checking one upload ({max_pixels / 1e6:g} megapixels, "
                             f"{max_upload_bytes / 2**20:g} MB) with the connections' buffers {_gb(self.reserve)}; "
                             "raise --max-memory-gb or lower --max-megapixels")
        self.jobs: dict[str, Job] = {}  # insertion order = submission order
        self.lock = threading.Lock()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.checking = threading.Lock()  # one upload decoded at a time
        self.uploads = threading.BoundedSemaphore(max_uploads)
        self.stopping = False
        self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        self._alive = _hold_lock(self.folder / LOCK_NAME)  # tells a live server's folder from a killed one's
        self.worker = threading.Thread(target=self._work, name="flowsr-serve-worker", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> App:
        from flowsr import memory

        for model in self.models.values():  # the first estimate of a network warms the meta device up
            if model.net is not None:
                memory.upscale_bytes(model, 16, 16)
        self.worker.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Cancel the running job at its next tile or layer, drop the queued ones, wait for the worker
        (up to ``timeout`` s; None: as long as it takes) and remove the temporary folder."""
        self.stopping = True
        self.queue.put(None)
        if self.worker.is_alive():
            self.worker.join(timeout)
        self._remove_folder()
        if self._alive is not None:
            self._alive.close()

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
                "max_memory_bytes": self.max_memory, "job_memory_bytes": self.job_memory,
                "max_steps": MAX_STEPS, "tile": self.tile}

    def check(self, params: dict[str, str]) -> tuple:
        """The job's (name, model name, settings, seed) from the query; raises RequestError (400)."""
        from flowsr.pipeline import Settings

        name = "".join(c if c.isprintable() else "_" for c in Path(params.get("name") or "").name[:200])
        name = name or "image"
        model_name = params.get("model") or next(iter(self.models))
        if model_name not in self.models:
            raise RequestError(400, f"unknown model {model_name!r} (this server has: {', '.join(self.models)})")
        steps = _number(params, "steps", int)
        t = _number(params, "t", float)
        seed = _number(params, "seed", int) or 0
        if steps is not None and steps > MAX_STEPS:
            raise RequestError(400, f"steps must be at most {MAX_STEPS}, got {steps}")
        if not 0 <= seed < 2**63:
            raise RequestError(400, f"seed must be in [0, 2^63), got {seed}")
        settings = Settings(steps=steps, t=t)
        try:
            self.models[model_name].resolve(settings)
        except ValueError as error:
            raise RequestError(400, str(error)) from error
        return name, model_name, settings, seed

    def check_room(self) -> None:
        """Raise RequestError (503) when the queue is full or the server is stopping."""
        if self.stopping:
            raise RequestError(503, "the server is stopping")
        if self._waiting() >= self.max_queue:
            raise RequestError(503, "the queue is full; try again in a moment")

    @contextlib.contextmanager
    def upload_slot(self, make_room=None):
        """Hold one of the ``max_uploads`` slots for receiving a body; when none is free, ``make_room()`` may
        drop a slow upload (then its slot is waited for, up to 2 s); RequestError (503) when none is free."""
        if not self.uploads.acquire(blocking=False) and not (make_room and make_room()
                                                              and self.uploads.acquire(timeout=2.0)):
            raise RequestError(503, f"{self.max_uploads} uploads are already arriving; try again in a moment")
        try:
            yield
        finally:
            self.uploads.release()

    def new_file(self, suffix: str = ".upload") -> Path:
        """A fresh file name in the server's temporary folder."""
        return self.folder / f"{secrets.token_hex(8)}{suffix}"

    def submit(self, upload: bytes | Path, params: dict[str, str]) -> Job:
        """Check the settings and the image, estimate the job's memory and queue it.

        ``upload``: the file's bytes, or a file in :attr:`folder` the job then owns (it is removed
        on refusal). Raises RequestError: 400 settings, 413 too large, 415 not an image, 503 busy.
        """
        from flowsr.io import ImageReadError, read_image

        path = upload if isinstance(upload, Path) else self.new_file()
        try:
            if not isinstance(upload, Path):
                path.write_bytes(upload)
            name, model_name, settings, seed = self.check(params)
            self.check_room()
            model = self.models[model_name]
            with self.checking:
                try:
                    image = read_image(path, max_pixels=self.max_pixels, name=name)  # read as it decodes
                except ImageReadError as error:
                    message = str(error).replace("(pass --allow-large to override)",
                                                 "(the server's limit is flowsr serve --max-megapixels)")
                    raise RequestError(413 if "too large" in message else 415, message) from error
                tile, estimate = self._plan(model, model_name, image, path.stat().st_size, name)
                described = _describe(image)
                del image  # before the next upload is decoded: the worker decodes it again
            job = Job(secrets.token_hex(8), name, model_name, settings, seed, path, tile)
            job.info = {"input": described, "tile": tile, "memory_estimate": estimate}
            with self.lock:
                if self._waiting(locked=True) >= self.max_queue or self.stopping:
                    raise RequestError(503, "the queue is full; try again in a moment")
                self._expire()
                self.jobs[job.id] = job
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.queue.put(job)
        self.log(f"job {job.id}: {name} {job.info['input']['width']}x{job.info['input']['height']} "
                 f"queued for {model_name} (tile {tile}, about {_gb(estimate)})")
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

    def result(self, job_id: str) -> tuple[Path, str]:
        """The result PNG's path and a download name, e.g. ``photo_x4.png``."""
        job = self._job(job_id)
        if job.state != "done" or job.result is None:
            raise RequestError(409, f"job {job_id} is {job.state}, it has no result" +
                               (f": {job.error}" if job.error else ""))
        stem = Path(job.name).stem.lstrip(".") or "image"
        return job.result, f"{stem}_x{self.models[job.model].scale}.png"

    def delete(self, job_id: str) -> None:
        """Forget the job: a queued one is skipped, a running one stops at its next tile or layer."""
        job = self._job(job_id)
        with self.lock:
            self.jobs.pop(job.id, None)
            job.cancelled = True
            if job.state != "running":  # the worker removes a running job's files itself
                _remove(job)

    # -- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            with self.lock:
                if job.cancelled or self.stopping:
                    _remove(job)
                    continue
                job.started, job.state = time.monotonic(), "running"
            try:
                self._process(job)
            except Cancelled:
                job.state = "cancelled"
                self.log(f"job {job.id}: cancelled after {job.tiles_done} of {job.tiles_total} tiles")
            except Exception as error:  # one bad job (e.g. out of memory) must not stop the server
                job.error = " ".join(f"{type(error).__name__}: {error}".split())[:500]
                job.state = "error"
                self.log(f"job {job.id}: failed: {job.error}")
            finally:
                job.finished = time.monotonic()
                with self.lock:
                    if job.upload is not None:
                        job.upload.unlink(missing_ok=True)
                        job.upload = None
                    if job.cancelled or job.state != "done":
                        _remove(job)
                _clear_resize_cache()

    def _process(self, job: Job) -> None:
        from flowsr.io import read_image, write_image_rows
        from flowsr.pipeline import image_seed, tile_count

        model = self.models[job.model]
        image = read_image(job.upload, max_pixels=self.max_pixels, name=job.name)
        job.upload.unlink()
        height, width = image.rgb.shape[-2:]
        job.tiles_total = tile_count(height, width, job.tile, self.tile_overlap)
        settings = model.resolve(job.settings)
        target = self.folder / f"{job.id}.png"
        with self._watch(model, job) as progress:
            rows = model.upscale_image_rows(image, job.settings, seed=image_seed(job.seed, job.name),
                                            tile=job.tile, tile_overlap=self.tile_overlap, progress=progress)
            write_image_rows(target, rows, image.bit_depth, color=image.color)  # streamed; nothing left if it raises
        seconds = time.monotonic() - job.started
        knob = _kind(model) == "oftsr" or (_kind(model) == "meanflow" and settings.steps == 1)
        output = {**job.info["input"], "width": width * model.scale, "height": height * model.scale}
        job.info.update(output=output, seconds=round(seconds, 3), nfe=model.nfe(settings),
                        steps=settings.steps, t=settings.t if knob else None,
                        png_bytes=target.stat().st_size, notes=list(image.notes))
        job.settings = settings
        with self.lock:
            job.result, job.state = target, "done"
        self.log(f"job {job.id}: {job.name} -> {output['width']}x{output['height']} with "
                 f"{job.model}, NFE {job.info['nfe']}, {seconds:.2f} s")

    @contextlib.contextmanager
    def _watch(self, model, job: Job):
        """While ``job`` runs: yields the pipeline's ``progress(done, total)`` callback, which counts its
        finished tiles and raises :class:`Cancelled` before the next tile once the job is deleted or the
        server stops; the same check runs before every layer of the model's torch network and of its
        start network's (forward pre-hooks; only the worker thread uses the models)."""

        def check(*_):
            if job.cancelled or self.stopping:
                raise Cancelled

        def progress(done: int, total: int) -> None:
            job.tiles_done, job.tiles_total = done, total
            check()

        # a torch network is also stopped between its layers; an ONNX Runtime session only between calls
        from torch import nn

        nets, start = [model.net], model.start
        while start is not None:
            nets.append(start.net)
            start = start.start
        layers = [module for net in nets if isinstance(net, nn.Module) for module in net.modules()]
        hooks = [module.register_forward_pre_hook(check) for module in layers]
        try:
            yield progress
        finally:
            for hook in hooks:
                hook.remove()

    # -- helpers ---------------------------------------------------------------------------------
    def _plan(self, model, model_name: str, image, file_bytes: int, name: str) -> tuple[int, int]:
        """(tile, estimated peak bytes) for upscaling ``image``: the configured or automatic tile, halved
        while the job does not fit in :attr:`job_memory`; RequestError 413 when none fits."""
        from flowsr import memory
        from flowsr.pipeline import AUTO_TILE, auto_tile, row_buffer_bytes

        height, width = image.rgb.shape[-2:]
        planes = 3 + (image.alpha is not None)
        first = auto_tile(height, width) if self.tile == 0 else max(self.tile, 0)
        tiles = [first]
        side = first or AUTO_TILE
        while self.tile >= 0 and side >= 2 * SMALLEST_TILE:
            side //= 2
            tiles.append(side)
        decoding = memory.decode_bytes(file_bytes, height * width)
        best = None
        for tile in tiles:
            need = max(decoding, memory.upscale_bytes(model, height, width, image.rgb.shape[0],
                                                      image.alpha is not None, tile))
            rows = row_buffer_bytes(height, width, model.scale, tile, planes, model._needs_noise)
            if need <= self.job_memory and (model.max_row_buffers is None or rows <= model.max_row_buffers):
                return tile, need  # (the pipeline refuses rows over max_row_buffers itself)
            best = need if best is None else min(best, need)
        raise RequestError(413, f"{name}: upscaling this {width}x{height} image with {model_name} needs about "
                                f"{_gb(best)} of memory, more than this server allows for one job "
                                f"({_gb(self.job_memory)}; flowsr serve --max-memory-gb); try a smaller image")

    def _job(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(404, f"no job {job_id!r} (finished jobs are kept {self.keep_seconds / 60:g} min)")
        return job

    def _waiting(self, locked: bool = False) -> int:
        """Jobs waiting in the queue."""
        with contextlib.nullcontext() if locked else self.lock:
            return sum(1 for job in self.jobs.values() if job.state == "queued")

    def _expire(self) -> None:
        """Drop finished jobs beyond the newest ``keep``, older than ``keep_seconds`` or, but for the newest,
        beyond ``keep_bytes`` of results (lock held)."""
        finished = [job for job in self.jobs.values() if job.state in ("done", "error")]
        now, kept_bytes = time.monotonic(), 0
        for index, job in enumerate(reversed(finished)):
            kept_bytes += job.info.get("png_bytes", 0)
            too_much = index > 0 and kept_bytes > self.keep_bytes
            if index >= self.keep or now - (job.finished or now) > self.keep_seconds or too_much:
                self.jobs.pop(job.id, None)
                _remove(job)


def _hold_lock(path: Path):
    """Create ``path`` and hold an ``flock`` on it for as long as the returned file is open (this process's
    life); None where there is no flock."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(path, "wb")  # noqa: SIM115 (kept open on purpose)
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def remove_stale_folders(parent: Path | None = None) -> list[tuple[Path, int]]:
    """Delete the temporary folders that killed servers left in ``parent`` (default: the system's temporary
    directory): this user's ``flowsr-serve-*`` folders whose lock no live server holds. Returns each folder
    removed and the bytes it held."""
    try:
        import fcntl
    except ImportError:
        return []
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if not (entry.name.startswith(FOLDER_PREFIX) and entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.getuid()):
                continue
            try:
                fd = os.open(Path(entry.path) / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # no lock file: not made by this version, or being created; left alone
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its server is alive
                size = sum(f.stat().st_size for f in Path(entry.path).iterdir() if f.is_file())
                shutil.rmtree(entry.path)
                removed.append((Path(entry.path), size))
            except OSError:
                continue
            finally:
                os.close(fd)
    return removed


def _remove(job: Job) -> None:
    """Delete the job's files (its upload and result)."""
    for path in (job.upload, job.result):
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
    job.upload = job.result = None


def _clear_resize_cache() -> None:
    """Empty the resize-matrix caches after a job: matrices of other images' sizes would pile up."""
    from flowsr import ops

    ops._weight_matrix.cache_clear()
    ops._torch_weight.cache_clear()


def _resident_bytes() -> int:
    """This process's resident memory now (Linux); elsewhere its peak so far, or 0."""
    with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(ImportError, OSError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    return 0


def _gb(size: float) -> str:
    return f"{size / 2**30:.2f} GB" if size >= 2**30 / 10 else f"{size / 2**20:.0f} MB"


def _kind(model) -> str:
    return model.config.kind if model.config is not None else "bicubic"


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


# -- HTTP ------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the :class:`App` in ``self.server.app``; every error is a JSON 4xx/5xx."""

    server_version = "flowsr-serve"
    timeout = STALL_SECONDS  # a connection that sends nothing this long is dropped
    unread = 0  # bytes of the request body not read yet

    def setup(self):
        super().setup()
        self.rfile = _HeaderLimit(self.rfile, HEADER_BYTES)
        self.state = self.server.state_of(self.request)

    def handle_one_request(self):
        """One request; its line and headers must arrive within :data:`HEADER_SECONDS` (the watchdog drops the
        connection otherwise), and together be at most :data:`HEADER_BYTES` (431)."""
        self.state.enter("headers")
        self.rfile.left = HEADER_BYTES
        try:
            super().handle_one_request()
        except http.client.LineTooLong:  # the request line itself (http.server answers long headers itself)
            self.close_connection = True
            self.command, self.request_version, self.requestline, self.path = "", "HTTP/1.0", "", ""
            with contextlib.suppress(OSError):
                self._json({"error": f"request line and headers over {HEADER_BYTES} bytes"}, 431)

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
            self.state.enter("work")  # Dropped (an OSError) if the watchdog took the connection meanwhile
            self._check_headers()
            self._check_origin()
            try:
                url = urllib.parse.urlsplit(self.path)
            except ValueError:
                raise RequestError(400, f"malformed request path: {self.path[:100]!r}") from None
            route(url)
        except RequestError as error:
            if self.unread and error.status != 503:
                self._drain()
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client may be gone
                self._json({"error": str(error)}, error.status)
        except OSError:  # the client went away or stalled
            self.close_connection = True
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
            path, filename = app.result(job_id)
            headers = {"Cache-Control": "private, max-age=3600"}
            if _query(url).get("download") == "1":
                headers["Content-Disposition"] = f'attachment; filename="{_quote_name(filename)}"'
            self._send_file(path, "image/png", headers)
        else:
            raise RequestError(404, f"not found: {url.path}")

    def _post(self, url) -> None:
        if url.path != "/api/jobs":
            raise RequestError(404, f"not found: {url.path}")
        app = self.server.app
        params = _query(url)
        self.unread = self._content_length(app.max_upload_bytes)
        app.check(params)  # refuse bad settings before the body arrives
        app.check_room()
        with app.upload_slot(make_room=self.server.drop_slow_upload):  # a trickling upload gives way
            path = app.new_file()
            try:
                self._receive(path)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        job = app.submit(path, params)
        self._json({"id": job.id, "status": f"/api/jobs/{job.id}"}, 202)

    def _delete(self, url) -> None:
        job_id = _job_path(url.path)
        if job_id is None:
            raise RequestError(404, f"not found: {url.path}")
        self.server.app.delete(job_id)
        self._send(b"", "text/plain", status=204)

    # -- request and response plumbing -----------------------------------------------------------
    def _check_headers(self) -> None:
        """400 for headers that two parties could read differently: HTTP/1.1 without ``Host``, ``Host``,
        ``Origin`` or ``Content-Length`` given twice, a body sent with ``Transfer-Encoding``."""
        if self.request_version == "HTTP/1.1" and self.headers.get("Host") is None:
            raise RequestError(400, "an HTTP/1.1 request needs a Host header")
        for key in ("Host", "Origin", "Content-Length", "Sec-Fetch-Site"):
            if len(self.headers.get_all(key) or ()) > 1:
                raise RequestError(400, f"the {key} header is given more than once")
        if self.headers.get("Transfer-Encoding") is not None:
            raise RequestError(400, "Transfer-Encoding is not supported; send the body with a Content-Length")

    def _check_origin(self) -> None:
        """Only the page's own origin may use the server: a malformed Host or Origin is a 400; an Origin
        other than ``http://<Host>`` (``null`` included), a browser's cross-site POST or DELETE, and on a
        loopback address a Host that is not a loopback name (DNS rebinding) are refused with 403."""
        host_header = self.headers.get("Host")
        host = _host_port(host_header, "Host") if host_header is not None else None
        if self.server.loopback and host is not None and not _is_loopback(host[0]):
            raise RequestError(403, f"host {host[0]!r} refused: this server only answers on its loopback address")
        origin = self.headers.get("Origin")
        if origin is not None:
            if origin.strip().lower() == "null":
                raise RequestError(403, "requests from a sandboxed or local page (Origin: null) are refused; "
                                        "use the page this server serves")
            scheme, separator, rest = origin.strip().partition("://")
            if not separator:
                raise RequestError(400, f"malformed Origin header: {origin[:100]!r}")
            name, port = _host_port(rest, "Origin")
            own = None if host is None else ("http", host[0], host[1] or 80)
            if (scheme.lower(), name, port or {"http": 80, "https": 443}.get(scheme.lower())) != own:
                raise RequestError(403, f"requests from {origin[:100]!r} are refused: only this server's own page "
                                        "may use it")
        if self.command in ("POST", "DELETE") and (self.headers.get("Sec-Fetch-Site") or "").lower() in (
                "cross-site", "same-site"):
            raise RequestError(403, "cross-site requests are refused: only this server's own page may use it")

    def _content_length(self, limit: int) -> int:
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
            self.unread = length
            raise RequestError(413, f"file too large: {length / 2**20:.1f} MB > limit {limit / 2**20:g} MB "
                                    "(the server's limit is flowsr serve --max-upload-mb)")
        return length

    def _receive(self, path: Path) -> None:
        """Stream the body into ``path``, up to :data:`CHUNK` bytes at a time, as it arrives (the watchdog
        drops it, with a 408, when it averages less than :data:`MIN_RATE`)."""
        length = self.unread
        self.state.enter("body")
        with path.open("wb") as handle:
            while self.unread:
                try:
                    chunk = self.rfile.read1(min(self.unread, CHUNK))
                except TimeoutError:
                    self.unread = 0
                    raise RequestError(408, f"upload stalled: no data for {self.timeout:g} s") from None
                if not chunk:
                    received, self.unread = length - self.unread, 0
                    if self.state.dropped:
                        raise RequestError(408, self.state.dropped)
                    raise RequestError(400, f"upload cut short: got {received} of {length} bytes")
                handle.write(chunk)
                self.unread -= len(chunk)
                self.state.moved += len(chunk)
        self.state.enter("work")

    def _drain(self) -> None:
        """Read and drop the rest of a refused body (so the client reads our answer), unless absurdly large."""
        if self.unread > DRAIN_LIMIT:
            return
        with contextlib.suppress(OSError):  # Dropped included: a slow body is not waited for
            self.state.enter("body")
            while self.unread > 0 and (chunk := self.rfile.read1(min(self.unread, CHUNK))):
                self.unread -= len(chunk)
                self.state.moved += len(chunk)
        self.unread = 0

    def _json(self, payload: dict, status: int = 200) -> None:
        self._send(json.dumps(payload).encode(), "application/json", {"Cache-Control": "no-store"}, status)

    def _headers(self, content_type: str, length: int, headers: dict | None, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for key, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()

    def _send(self, data: bytes, content_type: str, headers: dict | None = None, status: int = 200) -> None:
        with contextlib.suppress(Dropped):
            self.state.enter("answer")  # a client that does not read its answers is dropped
        self._headers(content_type, len(data), headers, status)
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(data)

    def _send_file(self, path: Path, content_type: str, headers: dict) -> None:
        try:
            handle = path.open("rb")
        except OSError:
            raise RequestError(404, "the result was just deleted") from None
        with handle:
            self._headers(content_type, os.fstat(handle.fileno()).st_size, headers, 200)
            self.state.enter("answer")  # a reader slower than MIN_RATE is dropped
            while self.command != "HEAD" and (chunk := handle.read(CHUNK)):
                self.wfile.write(chunk)
                self.state.moved += len(chunk)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def log_request(self, code="-", size="-"):
        if self.server.verbose or (isinstance(code, int) and code >= 400):  # (a bad request line sets no path)
            path = (getattr(self, "path", "") or "").split("?")[0][:200]
            self.server.app.log(f'{getattr(self, "command", "") or "-"} {path} -> {int(code)}')


class Dropped(ConnectionAbortedError):
    """The watchdog took this connection (too slow, or its place went to a newer one)."""


class ConnectionState:
    """What the watchdog knows of one connection: its ``phase`` (headers: waiting for a request's line and
    headers; body: receiving an upload; work: the server is at work on the request; answer: sending a
    result), since when (``since``), the bytes moved in that phase (``moved``) and why it was dropped."""

    def __init__(self, sock: socket.socket):
        self.sock, self.lock = sock, threading.Lock()
        self.phase, self.since, self.moved = "headers", time.monotonic(), 0
        self.dropped: str | None = None

    def enter(self, phase: str) -> None:
        """Start ``phase``; raises :class:`Dropped` if the connection was dropped meanwhile."""
        with self.lock:
            if self.dropped:
                raise Dropped(self.dropped)
            self.phase, self.since, self.moved = phase, time.monotonic(), 0

    def slow(self, now: float, grace: float) -> str | None:
        """Why the connection may be dropped at ``now``: its headers are late, or once ``grace`` s into an
        upload or a download it averages less than :data:`MIN_RATE`. None: it may not."""
        age = now - self.since
        if self.phase == "headers" and age > HEADER_SECONDS:
            return f"request headers not complete after {HEADER_SECONDS} s"
        if self.phase in ("body", "answer") and age > grace and self.moved < MIN_RATE * age:
            what = "upload" if self.phase == "body" else "download"
            return f"{what} too slow: {self.moved} bytes in {age:.0f} s (at least {MIN_RATE >> 10} KiB/s)"
        return None

    def drop(self, reason: str) -> bool:
        """Take the connection from its thread, unless the server is at work on its request: a late request
        gets a 408 here; an upload's read ends (its thread answers 408 with ``reason``); a download's write
        fails. Returns whether it was dropped."""
        with self.lock:
            if self.dropped or self.phase == "work":
                return False
            self.dropped, phase = reason, self.phase
        with contextlib.suppress(OSError):
            if phase == "headers":
                body = json.dumps({"error": reason}).encode()
                # never blocks: a socket with a timeout is non-blocking underneath
                os.write(self.sock.fileno(), b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            self.sock.shutdown(socket.SHUT_RD if phase == "body" else socket.SHUT_RDWR)
        return True


class Server(ThreadingHTTPServer):
    """A threading HTTP server holding the :class:`App`: one daemon thread per connection, at most
    ``app.max_connections`` at once. A watchdog thread drops connections whose request headers are late
    or whose upload or download is slower than :data:`MIN_RATE`; a new connection beyond the limit takes
    the place of one waiting for its headers (the oldest) or of one slower than that rate, and gets a
    short 503 only when every connection is busy with a real request."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 resets connections when many users arrive at once

    def __init__(self, address: tuple[str, int], app: App, verbose: bool = False):
        self.app, self.verbose = app, verbose
        self.loopback = _is_loopback(address[0])
        self.states: dict[int, ConnectionState] = {}  # id(socket) -> its state, for the live connections
        self.states_lock = threading.Lock()
        self.closed = threading.Event()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        threading.Thread(target=self._watch, name="flowsr-serve-watchdog", daemon=True).start()

    def state_of(self, request) -> ConnectionState:
        with self.states_lock:
            return self.states[id(request)]

    def _live(self) -> int:
        """Connections not dropped (states_lock held); a dropped one stays listed until its thread ends."""
        return sum(1 for state in self.states.values() if not state.dropped)

    def _watch(self) -> None:
        while not self.closed.wait(WATCH_SECONDS):
            now = time.monotonic()
            with self.states_lock:
                states = list(self.states.values())
            for state in states:
                reason = state.slow(now, RATE_GRACE)
                if reason:
                    state.drop(reason)

    def _make_room(self, phases: tuple[str, ...], why: str) -> bool:
        """Drop the connection that least deserves its place (states_lock held): the oldest waiting for its
        headers, else the slowest upload or download under :data:`MIN_RATE` (one second in). Returns
        whether one was dropped."""
        now = time.monotonic()
        live = [s for s in self.states.values() if not s.dropped]
        waiting = sorted((s for s in live if s.phase == "headers" and "headers" in phases), key=lambda s: s.since)
        slow = sorted((s for s in live if s.phase in phases and s.phase != "headers" and s.slow(now, 1.0)),
                      key=lambda s: s.moved / max(now - s.since, 1e-9))
        for state in waiting + slow:
            reason = state.slow(now, 1.0) or f"request headers not complete after {now - state.since:.0f} s"
            if state.drop(f"{reason}; {why}"):
                return True
        return False

    def drop_slow_upload(self) -> bool:
        """Drop the slowest upload under :data:`MIN_RATE` so that a new one can take its slot."""
        with self.states_lock:
            return self._make_room(("body",), "its upload slot went to another upload")

    def server_close(self):
        self.closed.set()
        super().server_close()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a client that went away is not the server's error
            self.app.log(f"error on a connection from {client_address[0]}: {error!r}")

    def process_request(self, request, client_address):
        with self.states_lock:
            full = self._live() >= self.app.max_connections
            if full and not self._make_room(("headers", "body", "answer"), "the server needed the connection"):
                admitted = False
            else:
                self.states[id(request)] = ConnectionState(request)
                admitted = True
        if not admitted:
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request) -> None:
        with self.states_lock:
            state = self.states.get(id(request))
            if state is not None and state.sock is request:
                del self.states[id(request)]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class _HeaderLimit:
    """A connection's reader that refuses more than ``limit`` bytes of request line and headers (read with
    ``readline``; http.server then answers 431); the body (``read``) is bounded by the handler."""

    def __init__(self, reader, limit: int):
        self.reader, self.left = reader, limit

    def readline(self, size: int = -1) -> bytes:
        line = self.reader.readline(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong(f"request headers over {HEADER_BYTES} bytes")
        return line

    def read(self, size: int = -1) -> bytes:
        return self.reader.read(size)

    def __getattr__(self, name: str):  # close, closed, ...: the reader's own
        return getattr(self.reader, name)


def _refuse(connection: socket.socket) -> None:
    """Answer 503 on a connection beyond the limit without reading it (never blocks)."""
    body = b'{"error": "the server is busy (too many connections at once); try again in a moment"}'
    head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        connection.setblocking(False)
        connection.send(head + body)


def _query(url) -> dict[str, str]:
    try:
        return {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, max_num_fields=32).items()}
    except ValueError:
        raise RequestError(400, "too many query parameters") from None


def _host_port(text: str, what: str) -> tuple[str, int | None]:
    """(lower-case host name, port or None) of a Host header or of an origin after ``scheme://``;
    RequestError 400 when malformed (an unclosed IPv6 bracket, a port that is not a number, a path, ...)."""
    try:
        parts = urllib.parse.urlsplit("//" + text)
        name, port = parts.hostname, parts.port
    except ValueError:
        name = port = parts = None
    if not name or parts.netloc != text or "@" in text or any(c.isspace() for c in text):
        raise RequestError(400, f"malformed {what} header: {text[:100]!r}")
    return name, port


def _job_path(path: str, suffix: str = "") -> str | None:
    """The job id in ``/api/jobs/ID{suffix}``, or None."""
    prefix = "/api/jobs/"
    if not (path.startswith(prefix) and path.endswith(suffix)):
        return None
    job_id = path[len(prefix):len(path) - len(suffix)]
    return job_id if job_id and job_id.isascii() and job_id.isalnum() else None


def _quote_name(name: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "._- ") else "_" for c in name)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- command line ----------------------------------------------------------------------------------


def add_parser(subparsers):
    """Add ``serve`` to the ``flowsr`` command's subparsers; returns the new parser."""
    from flowsr.settings import option

    parser = subparsers.add_parser("serve", help="a local web page to try the models",
                                   description="Serve a local web page to upscale images with the models.")
    parser.add_argument("--model", action="append", default=None, metavar="M",
                        help="model directory, bundled name or 'bicubic'; repeat for several "
                             "(default: the default model and bicubic)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, "
                        "this machine only; 0.0.0.0 exposes the page to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload in MB (default 50)")
    parser.add_argument("--max-megapixels", type=float, default=4.0,
                        help="largest input image in megapixels (default 4)")
    parser.add_argument("--max-memory-gb", type=float, default=2.0,
                        help="memory the server may use in all, models included (default 2); a job whose "
                             "estimated peak does not fit beside the models is refused")
    parser.add_argument("--tile", type=option("tile"), default=0, help="LR tile size in pixels; 0: automatic, as for "
                        "flowsr upscale (256-pixel tiles for inputs over 512x512 pixels or with a side over "
                        "2048); -1: never tile; else 16 to 8192. Tiles are halved while a job does not fit "
                        "--max-memory-gb")
    parser.add_argument("--tile-overlap", type=option("tile-overlap"), default=16, help="LR overlap between tiles")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    parser.set_defaults(handler=run)
    return parser


def run(args) -> int:
    """Load the models, then serve until Ctrl-C or SIGTERM. Returns the exit status."""
    from flowsr import memory
    from flowsr.checkpoint import ModelLoadError
    from flowsr.pipeline import default_model, load

    printing = threading.Lock()

    def log(message: str) -> None:
        with printing:  # one line at a time from the worker and the connection threads
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    memory.return_freed_memory()  # the resident memory then follows the jobs' estimates
    for folder, size in remove_stale_folders():
        log(f"note: removed {folder} ({size / 2**20:.1f} MB), the temporary folder of a flowsr serve that was killed")
    specs = list(dict.fromkeys(args.model or [default_model(), "bicubic"]))
    if not all(0 < value < math.inf for value in (args.max_upload_mb, args.max_megapixels, args.max_memory_gb)):
        print("error: --max-upload-mb, --max-megapixels and --max-memory-gb must be positive numbers", file=sys.stderr)
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
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing to clean up yet
        return 130
    try:
        app = App(models, max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6),
                  max_memory=int(args.max_memory_gb * 2**30), tile=args.tile, tile_overlap=args.tile_overlap, log=log)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        server = Server((args.host, args.port), app, verbose=args.verbose)
    except OSError as error:
        app.stop()
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    signals = []

    def stop(signum, frame):  # SIGTERM as Ctrl-C: leave serve_forever, then stop the job at its next layer
        if not signals:
            threading.Thread(target=server.shutdown, daemon=True).start()
        signals.append(signum)

    if threading.current_thread() is threading.main_thread():
        # SIGINT also when started with it ignored (a shell's `&`); SIGHUP unless ignored (nohup)
        for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"):
            number = getattr(signal, name, None)
            if number is not None and (name != "SIGHUP" or signal.getsignal(number) is not signal.SIG_IGN):
                signal.signal(number, stop)
    try:
        app.start()
        if not server.loopback:
            log(f"warning: listening on {args.host}: anyone who can reach this machine can use the page")
        device = next(iter(models.values())).device
        print(f"flowsr serve: {', '.join(models)} on {device}; jobs up to {_gb(app.job_memory)} of memory "
              f"(--max-memory-gb {args.max_memory_gb:g}); open {server.url} (Ctrl-C to stop)", flush=True)
        server.serve_forever(poll_interval=0.2)
        log("stopping")
    finally:
        server.server_close()
        app.stop()
    return 0
