"""`flowsr serve`: the page in headless Chromium, the HTTP API, bad uploads, a bounded load test, cleanup.

The server runs in a subprocess on a free loopback port (so its memory can be read from /proc) with a
tiny MeanFlow model and bicubic. The browser test needs Debian's /usr/bin/chromium and Playwright's
Python package (`.ci/browser.sh` installs both; no browser is downloaded). Set FLOWSR_SCREENSHOT=PATH
to also save a screenshot of the page after a run (docs/serve.png is made that way).
"""

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import deflate_zeros, make_image, tiff_bytes
from PIL import Image

import flowsr
from flowsr.checkpoint import save_model_dir
from flowsr.config import ModelConfig
from flowsr.io import read_image_bytes, write_image
from flowsr.nets import NetConfig, UNet
from flowsr.pipeline import Settings, image_seed
from flowsr.serve import App, RequestError, _gb, add_parser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TINY = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=())
MAX_UPLOAD_MB = 0.25  # tiny limits, so oversized uploads are cheap to make
MAX_MEGAPIXELS = 0.01  # 10,000 pixels: 100x100
RSS_TOLERANCE_MB = 64  # RSS after the load test may exceed its warm baseline by this much


def make_model(directory: Path) -> Path:
    """A tiny one-step MeanFlow student with small random weights (the t knob applies)."""
    torch.manual_seed(0)
    net = UNet(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_model_dir(directory, net, ModelConfig(kind="meanflow", scale=4, net=TINY, default_steps=1, name="tiny"))
    return directory


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def rgba_png(height: int = 20, width: int = 24, seed: int = 0) -> bytes:
    rgb = make_image(np.random.default_rng(seed), height, width)
    alpha = np.linspace(60, 255, height * width).reshape(height, width).astype(np.uint8)
    return png_bytes(np.dstack([rgb, alpha]), "RGBA")


def scene_png() -> bytes:
    """A small drawn landscape with a word in it (96x72 RGB): what the screenshot shows."""
    from PIL import ImageDraw, ImageFont

    yy = np.mgrid[0:72, 0:96][0] / 72
    image = Image.fromarray(np.stack([110 + 60 * yy, 160 + 50 * yy, 235 - 20 * yy], -1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((66, 6, 86, 26), fill=(255, 214, 90))  # sun
    draw.polygon([(0, 56), (22, 34), (44, 56)], fill=(70, 110, 80))  # hills
    draw.polygon([(30, 56), (58, 28), (86, 56)], fill=(50, 90, 70))
    draw.rectangle((0, 56, 96, 72), fill=(120, 170, 90))  # meadow
    draw.rectangle((8, 46, 30, 64), fill=(200, 80, 60))  # house
    draw.polygon([(6, 46), (19, 36), (32, 46)], fill=(120, 50, 40))
    draw.rectangle((16, 54, 21, 64), fill=(70, 40, 30))
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    draw.text((40, 58), "flowsr", fill=(255, 255, 255), font=font)
    return png_bytes(np.asarray(image))


class Client:
    """Just enough HTTP for the tests; 4xx/5xx answers are returned, not raised."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def request(self, method: str, path: str, data: bytes | None = None) -> tuple[int, bytes, dict]:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def submit(self, data: bytes, **params) -> tuple[int, dict]:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        status, body, _ = self.request("POST", f"/api/jobs?{query}", data)
        return status, json.loads(body)

    def wait(self, job_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = json.loads(self.request("GET", f"/api/jobs/{job_id}")[1])
            if status["state"] in ("done", "error"):
                return status
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} not finished after {timeout} s")

    def upscale(self, data: bytes, **params) -> tuple[dict, bytes]:
        """Submit, wait, fetch: (final status, result PNG bytes)."""
        status, reply = self.submit(data, **params)
        assert status == 202, reply
        final = self.wait(reply["id"])
        assert final["state"] == "done", final
        code, body, headers = self.request("GET", f"/api/jobs/{reply['id']}/result")
        assert code == 200 and headers["Content-Type"] == "image/png"
        return final, body


SERVER_CODE = ("import argparse, sys\nfrom flowsr.serve import add_parser, run\n"
               "parser = argparse.ArgumentParser(prog='flowsr')\nadd_parser(parser.add_subparsers())\n"
               "sys.exit(run(parser.parse_args(sys.argv[1:])))")


def start_server(base: Path, *options: str) -> tuple[Client, subprocess.Popen, Path, Path]:
    """A `flowsr serve` subprocess on a free port with the tiny model and bicubic (TMPDIR: base/tmp):
    (client, process, its temp folder, its log file)."""
    model = base / "tiny"
    if not model.exists():
        make_model(model)
    temp = base / "tmp"
    temp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), "OMP_NUM_THREADS": "2"}
    log_path = base / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, "serve", "--model", str(model), "--model", "bicubic", "--port", "0",
             *options], stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # as a terminal, also under nohup
    killer = threading.Timer(90, process.kill)
    killer.start()
    line = process.stdout.readline()
    killer.cancel()
    if "open http" not in line:
        process.kill()
        pytest.fail(f"server did not start: {line!r}\n{log_path.read_text()}")
    url = line.split("open ")[1].split()[0]
    # keep reading the server's stdout so a full pipe can never block it
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    return Client(url), process, temp, log_path


def stop_server(process: subprocess.Popen, temp: Path, log_path: Path, sig=signal.SIGINT) -> None:
    """Stop the server as Ctrl-C does: it exits 0 and leaves no temporary folder behind."""
    process.send_signal(sig)
    try:
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        process.kill()
    assert list(temp.glob("flowsr-serve-*")) == []  # the server's temporary folder is removed on exit
    log = log_path.read_text()
    for trouble in ("Traceback", "terminate called", "internal error", "error on a connection"):
        assert trouble not in log, log


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A `flowsr serve` subprocess with the tiny model and bicubic: (client, process, its temp folder)."""
    base = tmp_path_factory.mktemp("serve")
    client, process, temp, log_path = start_server(base, "--max-upload-mb", str(MAX_UPLOAD_MB),
                                                   "--max-megapixels", str(MAX_MEGAPIXELS))
    yield client, process, temp
    stop_server(process, temp, log_path)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- the command line ------------------------------------------------------------------------------


def test_defaults_bind_loopback_and_limits():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.max_upload_mb, args.max_megapixels, args.max_memory_gb, args.tile) == (
        "127.0.0.1", 7860, 50.0, 4.0, 2.0, 0)
    args = parser.parse_args(["serve", "--model", "a", "--model", "b", "--port", "0"])
    assert args.model == ["a", "b"] and args.port == 0
    # --tile means what it means for flowsr upscale: 0 automatic, -1 never
    serve_help = " ".join(parser._subparsers._group_actions[0].choices["serve"].format_help().split())
    assert "--tile TILE LR tile size in pixels; 0: automatic, as for flowsr upscale" in serve_help
    assert "-1: never tile" in serve_help


def test_server_listens_on_loopback(served):
    client, _, _ = served
    assert client.url.startswith("http://127.0.0.1:")  # the address actually bound, no --host given
    status, body, headers = client.request("GET", "/")
    assert status == 200 and b"<title>flowsr serve</title>" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for asset in ("/", "/static/app.js", "/static/style.css"):  # served from the package: no CDN
        status, body, _ = client.request("GET", asset)
        assert status == 200 and b"://" not in body
    info = json.loads(client.request("GET", "/api/info")[1])
    assert [(m["name"], m["kind"], m["t"], m["steps"]) for m in info["models"]] == [
        ("tiny", "meanflow", True, True), ("bicubic", "bicubic", False, False)]
    # a page on another origin (or a DNS-rebound name) is refused
    request = urllib.request.Request(client.url + "/api/info", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 403


# -- the page in a real browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("browser test needs /usr/bin/chromium (run .ci/browser.sh: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser test needs Playwright's Python package (run .ci/browser.sh: pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_page_end_to_end(served, browser, tmp_path):
    client, _, _ = served
    source = tmp_path / "photo.png"
    source.write_bytes(rgba_png(20, 24))
    page = browser.new_page(viewport={"width": 1280, "height": 760}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(client.url)
    page.wait_for_selector("#model option", state="attached")
    assert page.input_value("#model") == "tiny"
    # bicubic has neither knob; the MeanFlow student has both, t only at one step
    page.select_option("#model", "bicubic")
    assert page.is_disabled("#steps") and page.is_disabled("#t")
    page.select_option("#model", "tiny")
    page.fill("#steps", "2")
    assert page.is_disabled("#t")
    page.fill("#steps", "1")
    assert page.is_enabled("#t")

    page.set_input_files("#file", str(source))
    page.focus("#t")
    for _ in range(4):  # move the knob: 1.00 -> 0.80
        page.keyboard.press("ArrowLeft")
    assert page.text_content("#t-value") == "0.80"
    page.click("#run")
    page.wait_for_selector("#download:not([hidden])", timeout=30_000)
    assert page.text_content("#stat-nfe") == "1"
    assert page.text_content("#stat-output").startswith("96×80 RGBA 8-bit")
    assert "t = 0.80" in page.text_content("#tag-right")
    assert page.evaluate("document.getElementById('out-img').naturalWidth") in (0, 96)  # may still load
    page.wait_for_function("document.getElementById('out-img').naturalWidth === 96")

    # the comparison slider: dragging on the picture moves the split
    box = page.locator("#stage").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    assert abs(float(page.input_value("#split")) - 25) < 2
    assert "inset(0px 75" in page.evaluate("getComputedStyle(document.getElementById('before')).clipPath")
    page.select_option("#zoom", "4")
    assert page.evaluate("document.getElementById('stage').style.width") == "384px"
    page.select_option("#zoom", "0")
    page.click("#mode-side")  # side by side: both panes at the output's size
    assert page.is_hidden("#compare") and page.is_visible("#side")
    widths = page.evaluate("[...document.querySelectorAll('#side .stage')].map(e => e.style.width)")
    assert len(set(widths)) == 1 and widths[0] != "", widths
    page.click("#mode-compare")

    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "photo_x4.png"
    saved = tmp_path / "downloaded.png"
    download.save_as(saved)
    with Image.open(saved) as result:
        assert result.size == (96, 80) and result.mode == "RGBA"

    # a broken upload: a clear message on the page, and the page still works after it
    bad = tmp_path / "broken.png"
    bad.write_bytes(source.read_bytes()[:200])
    page.set_input_files("#file", str(bad))
    page.click("#run")
    page.wait_for_selector("#message:not([hidden])")
    assert "broken.png: truncated or corrupt image" in page.text_content("#message")
    # not an image at all: the server's error alone, no "cannot show this file" and no broken picture
    text = tmp_path / "notes.png"
    text.write_bytes(b"hello, not an image\n" * 10)
    page.set_input_files("#file", str(text))
    page.click("#run")
    page.wait_for_selector("#message:not([hidden])")
    assert "notes.png: not an image file" in page.text_content("#message")
    page.wait_for_function("document.getElementById('in-img').complete")  # the browser has tried it too
    assert page.is_hidden("#placeholder") and page.is_hidden("#compare") and page.is_hidden("#side")
    assert "This server takes images up to 256 kB and 0.01 megapixels" in page.text_content("#limits")
    scene = tmp_path / "scene.png"
    scene.write_bytes(scene_png())
    page.set_input_files("#file", str(scene))
    assert page.is_hidden("#message")
    page.select_option("#model", "bicubic")
    page.click("#run")
    page.wait_for_selector("#download:not([hidden])", timeout=30_000)
    assert page.text_content("#stat-nfe") == "0"
    assert errors == []
    if os.environ.get("FLOWSR_SCREENSHOT"):  # e.g. docs/serve.png: input | result, split in the middle
        page.wait_for_function("document.getElementById('out-img').naturalWidth === 384")
        box = page.locator("#stage").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(os.environ["FLOWSR_SCREENSHOT"],
                                                                         optimize=True)
    page.close()


# -- the HTTP API ----------------------------------------------------------------------------------


def test_modes_are_kept(served):
    client, _, _ = served
    rng = np.random.default_rng(1)
    grey16 = (rng.random((10, 12)) * 65535).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey16).save(buffer, format="PNG")  # mode I;16
    grey = make_image(rng, 10, 12)[..., 0]
    for data, mode, depth in [(buffer.getvalue(), "grey 16-bit", 16), (png_bytes(grey), "grey 8-bit", 8),
                              (png_bytes(np.dstack([grey, grey]), "LA"), "grey+alpha 8-bit", 8),
                              (_rgb16_png(rng), "RGB 16-bit", 16)]:
        final, body = client.upscale(data, model="bicubic", name="x.png")
        assert final["output"]["mode"] == final["input"]["mode"] == mode
        result = read_image_bytes(body, "result")
        assert result.bit_depth == depth and tuple(result.rgb.shape[-2:]) == (40, 48)


def _rgb16_png(rng) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = write_image(Path(folder) / "rgb16.png", torch.from_numpy(rng.random((3, 10, 12), np.float32)),
                           bit_depth=16)
        return path.read_bytes()


def test_bad_uploads_get_4xx_and_the_server_keeps_going(served):
    client, process, _ = served
    good = rgba_png(12, 12)
    cases = [
        (good[:150], {}, 415, "truncated or corrupt"),  # corrupt
        (b"hello, not an image\n" * 10, {"name": "notes.txt"}, 415, "notes.txt: not an image file"),
        (os.urandom(int(MAX_UPLOAD_MB * 2**20) + 1), {}, 413, "file too large"),  # over --max-upload-mb
        (png_bytes(np.zeros((101, 100, 3), np.uint8)), {}, 413, "image too large"),  # over --max-megapixels
        (b"", {}, 415, "empty file"),
        (good, {"model": "nope"}, 400, "unknown model 'nope'"),
        (good, {"model": "bicubic", "steps": "2"}, 400, "one-step model"),
        (good, {"model": "tiny", "t": "1.5"}, 400, "t must be in [0, 1]"),
        (good, {"model": "tiny", "t": "lots"}, 400, "t must be a number"),
        (good, {"model": "tiny", "steps": "9999"}, 400, "steps must be at most"),
        # a 100x100 TIFF whose one deflate tile inflates to 4096x4096 (48 MiB): refused from its tags
        (tiff_bytes(100, 100, deflate_zeros(4096 * 4096 * 3), tile=(4096, 4096)), {"name": "bomb.tif"}, 415,
         "bomb.tif: TIFF tile of 4096x4096 pixels would take 64 MiB to decode"),
    ]
    peak = status_kb(process.pid, "VmHWM")
    for index, (data, params, code, message) in enumerate(cases):
        status, reply = client.submit(data, **{"name": "upload.png", **params})
        assert status == code and message in reply["error"], (params, status, reply)
        assert "\n" not in reply["error"]
        # the next request still succeeds
        final, body = client.upscale(good, model="tiny" if index == 0 else "bicubic", name="ok.png")
        assert final["output"]["width"] == 48
    assert client.request("GET", "/api/jobs/0123abcd")[0] == 404
    assert client.request("GET", "/nowhere")[0] == 404
    assert process.poll() is None
    assert status_kb(process.pid, "VmHWM") - peak < 32 << 10  # KB: the bomb was never decoded


def test_concurrent_load_shares_one_model_and_memory_returns(served):
    client, process, temp = served
    images = [rgba_png(16 + i % 5, 20 + i % 3, seed=i) for i in range(20)]
    client.upscale(images[0], model="tiny", name="warm.png")  # warm-up: first-use allocations
    baseline = rss_mb(process.pid)

    def one(index: int):
        final, body = client.upscale(images[index], model="tiny" if index % 4 == 0 else "bicubic",
                                     name=f"load{index}.png", seed=str(index))
        with Image.open(io.BytesIO(body)) as result:
            assert result.size == (4 * final["input"]["width"], 4 * final["input"]["height"])
        client.request("DELETE", f"/api/jobs/{final['id']}")
        return final

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    wall = time.monotonic() - start
    assert [r["state"] for r in results] == ["done"] * 20
    assert max(r["waited"] for r in results) > 0  # they queued: one worker ran them in turn
    after = rss_mb(process.pid)
    assert after < baseline + RSS_TOLERANCE_MB, (baseline, after)
    print(f"20 concurrent jobs in {wall:.2f} s; server RSS {baseline:.0f} MB -> {after:.0f} MB")
    assert process.poll() is None
    files = [p.name for p in temp.rglob("*") if p.is_file()]  # results of the other tests' jobs are kept
    deleted = {r["id"] for r in results}
    assert not [name for name in files if name.endswith(".upload") or Path(name).stem in deleted], files


# -- in process: tiling progress and the same pixels as `flowsr upscale` ------------------------------


def test_tiled_job_reports_progress_and_matches_the_pipeline(tmp_path):
    model = flowsr.load(make_model(tmp_path / "tiny"))
    app = App({"tiny": model}, tile=24, tile_overlap=4).start()
    try:
        data = png_bytes(make_image(np.random.default_rng(5), 30, 50))
        job = app.submit(data, {"name": "wide.png", "model": "tiny", "t": "0.5", "seed": "3"})
        deadline = time.monotonic() + 30
        while job.state not in ("done", "error") and time.monotonic() < deadline:
            time.sleep(0.02)
        status = app.status(job.id)
        assert status["state"] == "done", status
        assert status["tiles_total"] == status["tiles_done"] == 2 * 3
        expected = model.upscale_image(read_image_bytes(data, "wide.png"), Settings(t=0.5),
                                       seed=image_seed(3, "wide.png"), tile=24, tile_overlap=4)
        result = read_image_bytes(app.result(job.id)[0].read_bytes(), "result")
        assert torch.equal((result.rgb * 255).round(), (expected.rgb * 255).round())
        assert app.result(job.id)[1] == "wide_x4.png"
        app.delete(job.id)
        assert job.id not in app.jobs
    finally:
        app.stop()


def test_queue_is_bounded_and_deleted_jobs_are_skipped():
    app = App({"bicubic": flowsr.load("bicubic")}, max_queue=2)  # worker not started: jobs stay queued
    data = png_bytes(make_image(np.random.default_rng(6), 8, 8))
    first = app.submit(data, {"name": "a.png"})
    second = app.submit(data, {"name": "b.png"})
    assert [app.status(job.id)["position"] for job in (first, second)] == [1, 2]
    with pytest.raises(RequestError) as caught:
        app.submit(data, {"name": "c.png"})
    assert caught.value.status == 503 and "queue is full" in str(caught.value)
    app.delete(first.id)
    assert app.status(second.id)["position"] == 1
    app.start()
    try:
        deadline = time.monotonic() + 30
        while second.state != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert second.state == "done" and first.state == "queued" and first.result is None
    finally:
        app.stop()


# -- hardening (issue 15): memory, uploads, origins, cancellation, shutdown -------------------------

LIMITED = ("--max-memory-gb", "1", "--max-megapixels", "1", "--max-upload-mb", "4")  # the `limited` server


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key}")


def noise_png(height: int, width: int, seed: int = 0) -> bytes:
    """Random RGB pixels: the worst case for the PNG encoder and a large upload."""
    return png_bytes((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def raw_request(url: str, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict]:
    """One request with exactly these headers (Host included, none added): (status, JSON reply)."""
    import http.client

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server with small limits: 1 GB of memory in all, 1 megapixel, 4 MB uploads."""
    base = tmp_path_factory.mktemp("limited")
    client, process, temp, log_path = start_server(base, *LIMITED)
    yield client, process, temp
    stop_server(process, temp, log_path, signal.SIGTERM)


def test_the_largest_image_within_the_limits_streams_within_the_memory_limit(limited):
    client, process, _ = limited
    info = json.loads(client.request("GET", "/api/info")[1])
    assert info["max_memory_bytes"] == 2**30 and info["max_pixels"] == 1_000_000
    assert 0 < info["job_memory_bytes"] < info["max_memory_bytes"]
    # 1000x1000 random pixels (the limit) -> a 4000x4000 PNG; the whole output would be 192 MB in float32
    final, body = client.upscale(noise_png(1000, 1000), model="bicubic", name="big.png")
    assert (final["output"]["width"], final["output"]["height"]) == (4000, 4000)
    assert final["memory_estimate"] <= info["job_memory_bytes"]
    with Image.open(io.BytesIO(body)) as result:
        assert result.size == (4000, 4000)
    peak = status_kb(process.pid, "VmHWM") * 1024  # the server's peak resident memory since it started
    print(f"server peak {peak / 2**20:.0f} MB of {info['max_memory_bytes'] / 2**20:.0f} MB; "
          f"job estimate {final['memory_estimate'] / 2**20:.0f} MB")
    assert peak < info["max_memory_bytes"]


def test_a_job_that_would_not_fit_takes_smaller_tiles_or_is_refused_with_413(limited):
    client, process, _ = limited
    # one row of a million pixels: the output rows alone would not fit in the budget
    status, reply = client.submit(png_bytes(np.zeros((1, 1_000_000, 3), np.uint8)), model="bicubic", name="row.png")
    assert status == 413, reply
    assert reply["error"].startswith("row.png: upscaling this 1000000x1 image with bicubic needs about")
    assert "more than this server allows for one job" in reply["error"] and "--max-memory-gb" in reply["error"]
    # a megapixel through the network does not fit in the automatic 256-pixel tiles, but in 128-pixel ones
    status, reply = client.submit(noise_png(1000, 1000), model="tiny", name="net.png")
    assert status == 202, reply
    job = json.loads(client.request("GET", f"/api/jobs/{reply['id']}")[1])
    assert job["tile"] == 128 and job["tiles_total"] in (0, 81)
    assert client.request("DELETE", f"/api/jobs/{reply['id']}")[0] == 204  # cancelled: no need to run it
    assert process.poll() is None


def test_held_uploads_are_bounded_and_the_server_keeps_answering(limited):
    client, process, temp = limited
    client.upscale(rgba_png(8, 8), model="bicubic", name="warm.png")
    before = status_kb(process.pid, "VmRSS") / 1024
    size = 4 << 20  # --max-upload-mb 4
    payload = os.urandom(size - 1)  # every body stops one byte short: the server waits for the last one
    parts = urllib.parse.urlsplit(client.url)
    sockets, refused = [], set()  # the uploads answered 503
    try:
        for index in range(40):
            connection = socket.create_connection((parts.hostname, parts.port), timeout=30)
            sockets.append(connection)
            head = (f"POST /api/jobs?model=bicubic&name=held{index}.png HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    f"Content-Length: {size}\r\n\r\n").encode()
            try:
                connection.sendall(head + payload)
            except OSError:  # refused with 503 and closed before the body was sent
                refused.add(index)
        latencies = []
        for _ in range(10):  # all 40 held: the page still gets its answers
            start = time.monotonic()
            assert client.request("GET", "/api/info")[0] == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)
        during = status_kb(process.pid, "VmRSS") / 1024
        uploads = list(temp.rglob("*.upload"))
        for index, connection in enumerate(sockets):
            connection.settimeout(0.5)
            with contextlib.suppress(OSError):
                if connection.recv(64).startswith(b"HTTP/1.0 503"):
                    refused.add(index)
    finally:
        for connection in sockets:
            connection.close()
    print(f"40 held uploads of {size >> 20} MB: RSS {before:.0f} -> {during:.0f} MB, /api/info in "
          f"{max(latencies) * 1000:.0f} ms at most, {len(uploads)} being received")
    assert len(uploads) <= 8  # at most max_uploads bodies arrive at once, streamed to files
    assert len(refused) >= 40 - 8
    assert during - before < 64  # the 160 MB sent are on disk, not in memory
    deadline = time.monotonic() + 30  # the server notices the closed connections and removes their files
    while list(temp.rglob("*.upload")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(temp.rglob("*.upload")) == []
    final, _ = client.upscale(rgba_png(8, 8), model="bicubic", name="after.png")
    assert final["state"] == "done" and process.poll() is None


def test_only_the_page_s_own_origin_may_use_the_api(served):
    client, process, _ = served
    own = urllib.parse.urlsplit(client.url).netloc  # 127.0.0.1:PORT
    data = rgba_png(8, 8)
    path = "/api/jobs?model=bicubic&name=x.png"
    for origin in ["null", "http://evil.example", f"http://localhost:{own.split(':')[1]}", f"https://{own}",
                   "http://127.0.0.1"]:
        status, reply = raw_request(client.url, "POST", path, {"Host": own, "Origin": origin}, data)
        assert status == 403 and "refused" in reply["error"], (origin, status, reply)
    status, reply = raw_request(client.url, "POST", path, {"Host": own, "Sec-Fetch-Site": "cross-site"}, data)
    assert status == 403, reply
    status, reply = raw_request(client.url, "POST", path, {"Host": own, "Origin": f"http://{own}",
                                                           "Sec-Fetch-Site": "same-origin"}, data)
    assert status == 202, reply  # the page itself
    job = reply["id"]
    status, _ = raw_request(client.url, "DELETE", f"/api/jobs/{job}", {"Host": own, "Origin": "null"})
    assert status == 403 and client.request("GET", f"/api/jobs/{job}")[0] == 200  # not deleted
    status, _ = raw_request(client.url, "POST", path, {"Host": own}, data)
    assert status == 202  # no Origin: not a browser page (curl, scripts)
    assert process.poll() is None


def test_malformed_host_or_origin_is_a_400_not_a_500(served):
    client, process, _ = served
    own = urllib.parse.urlsplit(client.url).netloc
    for headers in [{"Host": "[::1"}, {"Host": "127.0.0.1:port"}, {"Host": "127.0.0.1:99999"}, {"Host": "a b"},
                    {"Host": own, "Origin": "http://[::1"}, {"Host": own, "Origin": "http://127.0.0.1:x"},
                    {"Host": own, "Origin": "127.0.0.1"}, {"Host": own, "Origin": f"http://{own}/path"}]:
        status, reply = raw_request(client.url, "GET", "/api/info", headers)
        assert status == 400 and reply["error"].startswith("malformed"), (headers, status, reply)
    status, reply = raw_request(client.url, "GET", "//[abc/api/info", {"Host": own})
    assert status == 404, reply  # http.server folds the leading slashes: a path like any other
    assert raw_request(client.url, "GET", "/api/info", {"Host": f"[::1]:{own.split(':')[1]}"})[0] == 200
    # the request line and headers are bounded in all (64 KB), not only per line (64 KB each, 100 of them)
    parts = urllib.parse.urlsplit(client.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        filler = "".join(f"X-Filler-{i}: {'x' * 30_000}\r\n" for i in range(3))
        connection.sendall(f"GET /api/info HTTP/1.1\r\nHost: {own}\r\n{filler}\r\n".encode())
        assert connection.recv(100).startswith(b"HTTP/1.0 431")
    assert process.poll() is None


def test_ambiguous_or_oversized_request_heads_are_refused(served):
    """Headers two parties could read differently are a 400 (was: the first one won), and a request line over
    64 KiB a 431 (was: no answer at all)."""
    client, process, _ = served
    own = urllib.parse.urlsplit(client.url).netloc
    post = f"POST /api/jobs?name=a.png HTTP/1.1\r\nHost: {own}\r\n"
    cases = [
        ("GET /api/info HTTP/1.1\r\n\r\n", 400, "an HTTP/1.1 request needs a Host header"),
        (f"GET /api/info HTTP/1.1\r\nHost: {own}\r\nHost: evil.example\r\n\r\n", 400,
         "the Host header is given more than once"),
        (f"GET /api/info HTTP/1.1\r\nHost: {own}\r\nOrigin: http://{own}\r\nOrigin: http://evil.example\r\n\r\n",
         400, "the Origin header is given more than once"),
        (post + "Content-Length: 4\r\nContent-Length: 400\r\n\r\nabcd", 400,
         "the Content-Length header is given more than once"),
        (post + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\nabcd", 400,
         "Transfer-Encoding is not supported"),
        (f"GET /{'a' * 70_000} HTTP/1.1\r\nHost: {own}\r\n\r\n", 431, "request line and headers over 65536 bytes"),
    ]
    parts = urllib.parse.urlsplit(client.url)
    for request, code, message in cases:
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
            connection.sendall(request.encode())
            answer = answer_of(connection).decode()
        assert answer.split()[1] == str(code) and message in answer, (request[:80], answer)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        connection.sendall(b"GET /api/info HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host
        assert answer_of(connection).startswith(b"HTTP/1.0 200")
    assert process.poll() is None


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def test_delete_stops_a_running_job_between_tiles():
    from flowsr import serve

    model = flowsr.load("bicubic")
    run = model._run

    def slow(*args, **kwargs):  # 0.05 s a tile: 64 tiles would take 3 s
        time.sleep(0.05)
        return run(*args, **kwargs)

    model._run = slow
    app = App({"bicubic": model}, tile=32, tile_overlap=4, max_memory=8 << 30).start()
    try:
        long = app.submit(png_bytes(make_image(np.random.default_rng(7), 220, 220)), {"name": "long.png"})
        wait_for(lambda: long.tiles_done >= 1)
        app.delete(long.id)
        short = app.submit(png_bytes(make_image(np.random.default_rng(8), 8, 8)), {"name": "short.png"})
        wait_for(lambda: short.state == "done")
        assert long.state == "cancelled" and long.tiles_done < long.tiles_total == 64
        left = [p.name for p in app.folder.iterdir() if p.name != serve.LOCK_NAME]
        assert left == [f"{short.id}.png"]  # the cancelled job left nothing
    finally:
        app.stop()
    assert model._run is slow and not app.folder.exists()


def test_delete_stops_a_running_job_between_network_steps(tmp_path):
    model = flowsr.load(make_model(tmp_path / "tiny"))
    calls = []

    def slow(module, args, output):  # one network evaluation: 0.02 s more
        calls.append(1)
        time.sleep(0.02)

    hook = model.net.register_forward_hook(slow)
    app = App({"tiny": model}, max_memory=8 << 30).start()
    try:
        job = app.submit(png_bytes(make_image(np.random.default_rng(9), 16, 16)), {"name": "a.png", "steps": "200"})
        wait_for(lambda: len(calls) >= 2)
        app.delete(job.id)
        wait_for(lambda: job.state != "running")
        assert job.state == "cancelled" and len(calls) < 100, len(calls)  # one image, one tile: stopped mid-way
    finally:
        app.stop()
        hook.remove()


def test_a_smaller_tile_is_taken_when_the_automatic_one_does_not_fit(tmp_path):
    from flowsr import memory

    model = flowsr.load(make_model(tmp_path / "tiny"))
    data = png_bytes(make_image(np.random.default_rng(10), 600, 600))
    need = {tile: memory.upscale_bytes(model, 600, 600, 3, False, tile) for tile in (256, 128, 64, 32)}
    assert need[256] > need[128] > need[64] > need[32]
    app = App({"tiny": model}, max_memory=2 << 30, max_pixels=1_000_000, baseline=0)
    reserve = app.max_memory - app.job_memory
    try:
        app.job_memory = (need[256] + need[128]) // 2
        job = app.submit(data, {"name": "a.png"})
        assert job.tile == 128 and app.status(job.id)["memory_estimate"] == need[128]
        app.job_memory = need[32] - 1  # not even in 32-pixel tiles
        with pytest.raises(RequestError) as caught:
            app.submit(data, {"name": "b.png"})
        assert caught.value.status == 413 and f"needs about {_gb(need[32])} of memory" in str(caught.value)
    finally:
        app.stop()
    with pytest.raises(ValueError, match="leaves no room for a job"):
        App({"tiny": model}, max_memory=reserve + (64 << 20), max_pixels=1_000_000, baseline=0)


ESTIMATE_CODE = """
import sys, tempfile
from pathlib import Path
import flowsr
from flowsr import memory
from flowsr.io import read_image_bytes, write_image_rows

def resident(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

spec, source, tile = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
memory.return_freed_memory()  # as flowsr serve does
model = flowsr.load(spec)
base = resident("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
image = read_image_bytes(source.read_bytes(), source.name)  # as the server reads an upload
decoding = resident("VmHWM") - base
rows = model.upscale_image_rows(image, None, seed=1, tile=tile)
write_image_rows(Path(tempfile.mkdtemp()) / "out.png", rows, image.bit_depth)
peak = resident("VmHWM") - base
height, width = image.rgb.shape[-2:]
print(decoding, memory.decode_bytes(source.stat().st_size, height * width), peak,
      memory.upscale_bytes(model, height, width, image.rgb.shape[0], image.alpha is not None, tile))
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs "
                    "to measure a peak")
@pytest.mark.parametrize("case", ["bicubic 700x900 RGB tile 256", "bicubic 24x3000 RGBA16 tile 256",
                                  "tiny 80x100 grey+alpha tile 40", "tiny 96x96 RGB tile 0"])
def test_memory_estimate_bounds_the_measured_peak(case, tmp_path):
    name, size, mode, _, tile = case.split()
    height, width = map(int, size.split("x"))
    rng = np.random.default_rng(11)
    if mode == "grey+alpha":
        data = png_bytes((rng.random((height, width, 2)) * 255).astype(np.uint8), "LA")
    elif mode == "RGBA16":
        data = None
        write_image(tmp_path / "in.png", torch.from_numpy(rng.random((3, height, width), np.float32)),
                    torch.from_numpy(rng.random((1, height, width), np.float32)), bit_depth=16)
    else:
        data = noise_png(height, width)
    source = tmp_path / "in.png"
    if data is not None:
        source.write_bytes(data)
    spec = str(make_model(tmp_path / "tiny")) if name == "tiny" else name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", ESTIMATE_CODE, spec, str(source), tile],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    decoding, decoding_estimate, measured, estimate = map(int, out.stdout.split())
    print(f"{case}: decoding {decoding / 2**20:.0f} MB (estimate {decoding_estimate / 2**20:.0f}), "
          f"peak {measured / 2**20:.0f} MB (estimate {estimate / 2**20:.0f})")
    assert decoding <= decoding_estimate
    assert measured <= max(estimate, decoding_estimate) <= 4 * measured + (64 << 20)


def test_sigterm_during_a_job_stops_it_and_exits_cleanly(tmp_path):
    client, process, temp, log_path = start_server(tmp_path)
    try:
        # 200 MeanFlow steps on one 512x512 output: a minute or more of work
        status, reply = client.submit(noise_png(128, 128), model="tiny", steps="200", name="long.png")
        assert status == 202, reply
        wait_for(lambda: json.loads(client.request("GET", f"/api/jobs/{reply['id']}")[1])["state"] == "running")
        assert len(list(temp.glob("flowsr-serve-*"))) == 1  # the server's folder, removed on exit
    except BaseException:
        process.kill()
        raise
    stop_server(process, temp, log_path, signal.SIGTERM)  # exit 0, no temporary folder, no abort
    log = log_path.read_text()
    assert "stopping" in log and "cancelled" in log, log


def test_a_killed_server_s_folder_is_removed_by_the_next_start_and_sighup_sigquit_stop_cleanly(tmp_path):
    """issue 23.5: kill -9 left the temporary folder for ever (was also so for SIGHUP and SIGQUIT)."""
    bases = [tmp_path / name for name in "abc"]
    for base in bases:
        base.mkdir()
    for base in bases[1:]:
        (base / "tmp").symlink_to(bases[0] / "tmp")  # one temporary directory for the three servers
    (bases[0] / "tmp").mkdir()
    processes = []
    try:
        client, process, temp, _ = start_server(bases[0])
        processes.append(process)
        status, reply = client.submit(rgba_png(), name="left.png")  # something in the folder
        assert status == 202, reply
        process.kill()
        process.wait()
        (killed,) = temp.glob("flowsr-serve-*")
        _, process_b, _, log_b = start_server(bases[1])
        processes.append(process_b)
        assert not killed.exists()
        assert f"/{killed.name} (" in log_b.read_text() and "a flowsr serve that was killed" in log_b.read_text()
        _, process_c, _, log_c = start_server(bases[2])  # b is alive: its folder stays
        processes.append(process_c)
        assert "note: removed" not in log_c.read_text() and len(list(temp.glob("flowsr-serve-*"))) == 2
        process_b.send_signal(signal.SIGHUP)
        assert process_b.wait(timeout=180) == 0, log_b.read_text()  # a busy machine is slow to stop
        stop_server(process_c, temp, log_c, signal.SIGQUIT)  # exit 0, and no folder left (b's neither)
    finally:
        for process in processes:
            process.kill()


@contextlib.contextmanager
def in_process_server(**options):
    """A :class:`flowsr.serve.Server` with bicubic in this process: (app, host, port)."""
    from flowsr import serve

    messages = []
    app = App({"bicubic": flowsr.load("bicubic")}, max_memory=8 << 30, log=messages.append, **options).start()
    server = serve.Server(("127.0.0.1", 0), app)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield app, *server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        app.stop()
    assert not [m for m in messages if "error on a connection" in m or "internal error" in m], messages


def answer_of(connection: socket.socket) -> bytes:
    """Everything the server sends on ``connection`` until it closes it."""
    return b"".join(iter(lambda: connection.recv(4096), b""))


def upload_head(host: str, port: int, length: int) -> bytes:
    return f"POST /api/jobs?name=a.png HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {length}\r\n\r\n".encode()


def test_idle_and_slow_connections_give_way_and_a_busy_server_says_503(monkeypatch):
    from flowsr import serve

    monkeypatch.setattr(serve, "HEADER_SECONDS", 1)  # 10 s in the real server
    monkeypatch.setattr(serve, "RATE_GRACE", 1.0)  # 10 s
    with in_process_server(max_connections=3) as (app, host, port):
        # three connections that send nothing fill the server; a fourth takes the oldest one's place
        idle = [socket.create_connection((host, port), timeout=10) for _ in range(3)]
        time.sleep(0.1)
        assert Client(f"http://{host}:{port}").request("GET", "/api/info")[0] == 200
        evicted = answer_of(idle[0])
        assert evicted.startswith(b"HTTP/1.1 408") and b"the server needed the connection" in evicted
        # the others are dropped when their headers are late (HEADER_SECONDS), with a 408
        started = time.monotonic()
        late = answer_of(idle[1])
        assert late.startswith(b"HTTP/1.1 408") and b"request headers not complete after 1 s" in late
        assert time.monotonic() - started < 3
        # a request line sent, the headers never finished: the same
        partial = socket.create_connection((host, port), timeout=10)
        partial.sendall(b"GET /api/info HTTP/1.1\r\nHost: x")
        assert b"request headers not complete" in answer_of(partial)
        # an upload trickling below MIN_RATE is dropped with a 408 once RATE_GRACE old; its file removed
        trickle = socket.create_connection((host, port), timeout=10)
        trickle.sendall(upload_head(host, port, 1000) + b"only part of it")
        wait_for(lambda: list(app.folder.glob("*.upload")))
        answer = answer_of(trickle)
        assert answer.startswith(b"HTTP/1.0 408") and b"upload too slow: 15 bytes in 1 s (at least 16 KiB/s)" in answer
        wait_for(lambda: not list(app.folder.glob("*.upload")))
        for connection in [*idle, partial, trickle]:
            connection.close()


def test_a_trickling_upload_gives_its_slot_to_a_new_one(monkeypatch):
    from flowsr import serve

    monkeypatch.setattr(serve, "RATE_GRACE", 60.0)  # the watchdog alone would wait a minute
    with in_process_server(max_uploads=1) as (app, host, port):
        trickle = socket.create_connection((host, port), timeout=10)
        trickle.sendall(upload_head(host, port, 1000) + b"x")
        wait_for(lambda: list(app.folder.glob("*.upload")))
        time.sleep(1.1)  # below MIN_RATE for over a second: it may be dropped for a new upload
        status, reply = Client(f"http://{host}:{port}").submit(png_bytes(make_image(np.random.default_rng(0), 8, 8)),
                                                             name="b.png")
        assert status == 202, reply
        answer = answer_of(trickle)
        assert answer.startswith(b"HTTP/1.0 408") and b"its upload slot went to another upload" in answer
        trickle.close()


def test_trickling_clients_do_not_lock_out_the_page_or_uploads():
    """The tester's case, shortened: 64 connections trickling header bytes and 8 uploads trickling body bytes
    (the defaults: 64 connections, 8 uploads); /api/info answers within 1 s and a real upload is accepted."""
    with in_process_server() as (app, host, port):
        headers = [socket.create_connection((host, port), timeout=30) for _ in range(64)]
        bodies = [socket.create_connection((host, port), timeout=30) for _ in range(8)]
        for connection in headers:
            connection.sendall(b"G")
        for connection in bodies:
            connection.sendall(upload_head(host, port, 10 << 20) + b"x")
        time.sleep(1.5)  # the uploads are now over a second below MIN_RATE
        client = Client(f"http://{host}:{port}")
        for _ in range(3):
            started = time.monotonic()
            assert client.request("GET", "/api/info")[0] == 200
            assert time.monotonic() - started < 1
        status, reply = client.submit(png_bytes(make_image(np.random.default_rng(0), 8, 8)), name="real.png")
        assert status == 202, reply
        for connection in headers + bodies:
            connection.close()


def test_a_server_busy_with_real_requests_answers_503(monkeypatch):
    from flowsr import serve

    monkeypatch.setattr(serve, "MIN_RATE", 0)  # every upload is fast enough: none gives way
    with in_process_server(max_connections=2) as (app, host, port):
        uploads = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
        for connection in uploads:
            connection.sendall(upload_head(host, port, 1000) + b"part")
        wait_for(lambda: len(list(app.folder.glob("*.upload"))) == 2)
        extra = socket.create_connection((host, port), timeout=10)
        answer = answer_of(extra)
        assert answer.startswith(b"HTTP/1.0 503 Service Unavailable") and b"too many connections" in answer
        for connection in [*uploads, extra]:
            connection.close()


def test_finished_results_are_bounded_on_disk_and_the_resize_cache_is_emptied():
    from flowsr import ops, serve

    app = App({"bicubic": flowsr.load("bicubic")}, keep_bytes=1, max_memory=8 << 30).start()
    try:
        jobs = []
        for index in range(3):
            jobs.append(app.submit(png_bytes(make_image(np.random.default_rng(index), 8 + index, 8)),
                                   {"name": f"{index}.png"}))
            wait_for(lambda: jobs[-1].state == "done")
        assert ops._weight_matrix.cache_info().currsize == 0  # matrices of each size do not pile up
        # each new job drops the finished results beyond keep_bytes (here: all but the newest finished one)
        assert [job.id in app.jobs for job in jobs] == [False, True, True]
        kept = sorted(p.name for p in app.folder.iterdir() if p.name != serve.LOCK_NAME)
        assert kept == sorted(f"{job.id}.png" for job in jobs[1:])
    finally:
        app.stop()
