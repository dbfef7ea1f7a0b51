"""Command line: ``flowsr upscale | eval | train | shard | degrade | models | export | import | bench | serve``.

Every command reports a bad file in one line naming it, keeps processing the other files, and exits
non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
import time
import warnings
from pathlib import Path

from flowsr.settings import option

EXIT_FAILED = 1
EXIT_USAGE = 2


def _words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


DEVICE_HELP = "where the network runs; auto: CUDA when available, else the CPU"
DTYPE_HELP = "precision of the network; auto: bf16 on CUDA, fp32 on the CPU"
QUIET_HELP = "no progress bars (they go to stderr, and only when it is a terminal)"
SLOW = 1.0  # seconds: a step that takes longer than this says what it is doing (on a terminal)


def _add_runtime(parser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help=DTYPE_HELP)
    parser.add_argument("--seed", type=option("seed"), default=0, help="base seed; each image's seed also "
                        "depends on its file name")
    parser.add_argument("--tile", type=option("tile"), default=0, help="LR tile size in pixels; 0: automatic "
                        "for upscale and serve, none for eval and bench; -1: never tile; else 16 to 8192")
    parser.add_argument("--tile-overlap", type=option("tile-overlap"), default=16, help="LR overlap between tiles")
    parser.add_argument("--color-fix", default="none", choices=["none", "wavelet", "adain"],
                        help="correct the output's colours against the bicubic-upsampled input")
    parser.add_argument("--threads", type=option("threads"), default=0, help="CPU threads, up to 256; 0: all "
                        "cores, shared evenly by "
                        "the processes of a node under torchrun")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowsr", description="One-step and few-step super-resolution "
                                     "with flow models.")
    commands = parser.add_subparsers(dest="command", required=True)

    # (--steps, --t and --guidance are checked against the model's kind with flowsr.settings' ranges)
    up = commands.add_parser("upscale", help="super-resolve image files or folders",
                             epilog="--tile 0 (the default) tiles automatically: 256-pixel tiles for inputs "
                             "over 512x512 pixels or with a side over 2048; --tile -1 never tiles.")
    up.add_argument("inputs", nargs="+", help="image files and/or folders")
    up.add_argument("-o", "--output", required=True, help="output folder")
    up.add_argument("--model", default="default", help="model directory, bundled name or 'bicubic'")
    up.add_argument("--steps", type=int, default=None, help="sampling steps of a flow teacher or a "
                    "MeanFlow student (default: the model's, see flowsr models); one-step models take only 1")
    up.add_argument("--t", type=float, default=None, help="fidelity (0) .. realism (1) knob of distilled "
                    "students (oftsr, meanflow); refused for other models")
    up.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (1 = off)")
    up.add_argument("--sampler", default=None, choices=["euler", "heun"], help="ODE solver of a flow teacher: "
                    "euler (1 network evaluation per step, the default) or heun (2 per step, more accurate)")
    up.add_argument("--suffix", default="", help="appended to output names, e.g. _x4")
    up.add_argument("--outscale", type=option("outscale", float), default=None, metavar="S",
                    help="final scale, any number in (0, 16], e.g. 2 or 3.5: the model upscales by its own scale, "
                    "then its output is resampled with Lanczos (Pillow, float32, antialiased when shrinking) to "
                    "S x the input's width and height, rounded half up; default: the model's scale (nothing resampled)")
    up.add_argument("--ext", default="png", choices=["png", "jpg", "webp", "auto"],
                    help="output format; auto: the input's (png, jpg or webp), else png. Every format keeps "
                    "the input's ICC profile and EXIF (orientation reset, it is applied); jpg drops alpha")
    up.add_argument("--quality", type=option("quality"), default=95, help="JPEG / WebP quality, 1..100")
    up.add_argument("--skip-existing", action="store_true", help="skip inputs whose output exists")
    up.add_argument("--allow-large", action="store_true", help="read images over 64 megapixels (and "
                    "over Pillow's decompression-bomb limit), and images too wide to stream in 2 GiB of rows")
    up.add_argument("--compile", default="none", metavar="MODE", help="torch.compile the network: none, default, "
                    "reduce-overhead (CUDA graphs), max-autotune (worth it for many images of one size, or tiled ones)")
    up.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP + "; and no line per image")
    _add_runtime(up)

    ev = commands.add_parser("eval", help="score models on a benchmark folder")
    ev.add_argument("--model", nargs="+", default=["bicubic"], help="one or more models")
    ev.add_argument("--data", required=True, help="folder of HR images, or with HR/ and LR/, or with LR/ alone")
    ev.add_argument("--protocol", default="auto", choices=["auto", "synthetic", "paired", "no-reference"],
                    help="auto: paired with HR/ and LR/, no-reference with LR/ alone (or a folder named LR), "
                    "else synthetic; no-reference: the images are real LR photographs, scored by NIQE")
    ev.add_argument("--scale", type=option("scale"), default=4)
    ev.add_argument("--steps", type=option("steps", many=True), default=None, help="list, e.g. 1,4,16")
    ev.add_argument("--t", type=option("t", float, many=True), default=None, help="list, e.g. 0,0.5,1 (students)")
    ev.add_argument("--guidance", type=option("guidance", float), default=None)
    ev.add_argument("--sampler", default=None, choices=["euler", "heun"])
    ev.add_argument("--metrics", default="psnr,ssim", help="psnr,ssim,hf,lpips,lpips_vgg,dists,niqe "
                    "(per image, averaged), fid,kid (over all crops of the set, see --fid-patch)")
    ev.add_argument("--fid-patch", type=option("fid-patch"), default=64, help="crop side for patch FID/KID")
    ev.add_argument("--json", default=None, help="write results here")
    ev.add_argument("--save", default=None, help="write super-resolved images under this folder")
    ev.add_argument("--report", default=None, help="write results.md, tradeoff.png (and grids) here")
    ev.add_argument("--grid", default=None, help="comma-separated image names for comparison grids")
    ev.add_argument("--reference", default=None, metavar="MODEL", help="also score every output against this "
                    "flow teacher's N-step Euler output from the same source noise: ref_psnr_y, ref_lpips "
                    "(how well a student copied its teacher)")
    ev.add_argument("--reference-steps", type=option("reference-steps"), default=32, metavar="N",
                    help="Euler steps of the "
                    "reference (default 32)")
    ev.add_argument("--reference-guidance", type=option("guidance", float), default=None, metavar="W",
                    help="guidance of the "
                    "reference (default: the CFG scale each student was distilled with, else 1)")
    ev.add_argument("-v", "--verbose", action="store_true", help="one row per image")
    ev.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    _add_runtime(ev)

    tr = commands.add_parser("train", help="train a model: flowsr train --preset NAME --out DIR k=v ...")
    tr.add_argument("--preset", required=True)
    tr.add_argument("--out", required=True, help="run / model directory")
    tr.add_argument("--resume", action="store_true")
    tr.add_argument("--config", default=None, help="YAML file of overrides (keys are config fields)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=500 data=DIR")

    sh = commands.add_parser("shard", help="pack a training folder into tar shards + index.json (train data=SHARDS)")
    sh.add_argument("source", help="folder of training images (recursive)")
    sh.add_argument("-o", "--output", required=True, help="shard folder to write")
    sh.add_argument("--shard-size", type=option("shard-size"), default=256, help="MB of image files per shard")

    dg = commands.add_parser("degrade", help="make LR images from HR images")
    dg.add_argument("-i", "--input", required=True, help="HR folder or file")
    dg.add_argument("-o", "--output", required=True, help="LR folder")
    dg.add_argument("--scale", type=option("scale"), default=4)
    dg.add_argument("--kind", default="bicubic", choices=["bicubic", "realesrgan"])
    dg.add_argument("--config", default=None, help="YAML overrides of the Real-ESRGAN settings")
    dg.add_argument("--seed", type=option("seed"), default=0)

    commands.add_parser("models", help="list bundled models")

    ex = commands.add_parser("export", help="write a model's network as ONNX: DIR/model.onnx + DIR/config.json",
                             epilog="DIR is then a model like any other (--model DIR), run by ONNX Runtime. "
                             'Needs the onnx extra: pip install "flowsr[onnx]".')
    ex.add_argument("model", help="bundled name or model directory")
    ex.add_argument("-o", "--output", required=True, help="directory to write (not a torch model directory)")
    ex.add_argument("--opset", type=option("opset"), default=None, help="ONNX opset, 18 or later (default: the "
                    "exporter's)")
    ex.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                    help="precision of the weights and image tensors (t and h stay float32)")
    ex.add_argument("--force", action="store_true", help="write into a non-empty DIR that is not a previous export "
                    "of this model (its model.onnx and config.json are replaced; its other files stay)")
    ex.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)

    im = commands.add_parser("import", help="turn another project's SR network file into a flowsr model directory",
                             epilog="FILE: weights of a single-image super-resolution network that spandrel "
                             "recognises (ESRGAN, Real-ESRGAN, SwinIR, Swin2SR, HAT, SPAN, SAFMN, DAT, ...) "
                             "as .safetensors or .pth/.pt/.ckpt; a pickle is read with torch.load(weights_only=True) "
                             "only, so one that holds code is refused. DIR gets model.safetensors + config.json and is "
                             "then a model for upscale, eval, bench, serve and export, and a start network for "
                             """training. Needs the import extra: pip install "flowsr[import]".""")
    im.add_argument("file", help="the network's weights file")
    im.add_argument("-o", "--output", required=True, help="model directory to write (new or empty)")
    im.add_argument("--force", action="store_true", help="write into a non-empty DIR (its model.safetensors and "
                    "config.json are replaced)")
    im.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)

    from flowsr import serve

    serve.add_parser(commands)

    bn = commands.add_parser("bench", help="measure inference (or training) speed")
    bn.add_argument("--model", nargs="+", default=["bicubic"], help="one or more models")
    bn.add_argument("--steps", type=option("steps", many=True), default=None, help="list, e.g. 1,4,16")
    bn.add_argument("--t", type=option("t", float), default=None)
    bn.add_argument("--size", type=option("size", many=True), default=[512],
                    help="output side in pixels; a list times each, e.g. 256,512")
    bn.add_argument("--batch", type=option("batch"), default=1)
    bn.add_argument("--repeat", type=option("repeat"), default=10)
    bn.add_argument("--compile", type=_words, default=["none"], metavar="MODES",
                    help="list of torch.compile modes to time, each in the same run: none (eager), default, "
                    "reduce-overhead (CUDA graphs), max-autotune; e.g. none,default")
    bn.add_argument("--ort-threads", type=option("ort-threads", many=True), default=None, metavar="LIST",
                    help="ONNX models: intra-op "
                    "thread counts to time (0: ONNX Runtime's default; default: torch's thread count)")
    bn.add_argument("--ort-opt", type=_words, default=["all"], metavar="LEVELS", help="ONNX models: graph "
                    "optimisation levels to time: disable, basic, extended, layout, all")
    bn.add_argument("--ort-execution", type=_words, default=["sequential"], metavar="MODES",
                    help="ONNX models: execution modes to time: sequential, parallel")
    bn.add_argument("--matmul", action="store_true", help="also measure the card's bf16 matmul rate")
    bn.add_argument("--train", default=None, metavar="PRESET",
                    help="instead: training throughput of every objective for this preset's network (real short "
                    "runs; --batch, --crop: overrides; --repeat: timed steps, after as many warm-up steps)")
    bn.add_argument("--paths", type=_words, default=["old", "fast"], metavar="PATHS",
                    help="with --train: the training paths to time in turn: old (fast=false), fast, compiled "
                         "(fast with compile=true, also on the CPU)")
    bn.add_argument("--objectives", type=_words, default=None, metavar="LIST",
                    help="with --train: the objectives to time (default all: flow_matching, regression, oftsr, "
                         "meanflow)")
    bn.add_argument("--data", default=None, help="with --train: training images (default: the preset's, else random)")
    bn.add_argument("--rounds", type=option("rounds"), default=1, help="with --train: time each path this many times, "
                    "alternating, and keep the fastest (on a busy machine)")
    bn.add_argument("--crop", type=option("crop"), default=None, help="with --train: HR crop size")
    bn.add_argument("--json", default=None)
    bn.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    bn.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help=DTYPE_HELP)
    return parser


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_on_signals() -> dict:
    """End a command on SIGTERM and SIGHUP as on Ctrl-C (unless they are ignored, e.g. under nohup): the
    exception unwinds the command, so a half-written output's temporary file is removed on the way.
    Returns the handlers replaced, to restore."""
    import signal

    def interrupt(signum, frame):
        raise Interrupted(signum)

    replaced = {}
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:
            replaced[number] = signal.signal(number, interrupt)
    return replaced


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by the commands that write JSON
    handler = {"upscale": cmd_upscale, "eval": cmd_eval, "train": cmd_train, "shard": cmd_shard, "degrade": cmd_degrade,
               "models": cmd_models, "export": cmd_export, "import": cmd_import, "bench": cmd_bench,
               "serve": _serve}[args.command]
    import signal

    replaced = _stop_on_signals() if threading.current_thread() is threading.main_thread() else {}
    try:
        return handler(args)  # (serve installs its own handlers)
    except Exception as error:
        if not isinstance(error, _expected_errors()):
            raise
        print(f"error: {' '.join(str(error).splitlines())}", file=sys.stderr)  # one line
        return EXIT_FAILED
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    finally:
        for number, previous in replaced.items():
            signal.signal(number, previous)


def _expected_errors() -> tuple[type, ...]:
    """The errors reported in one line. Found without importing torch: an error of a module's own type can
    only happen once that module is imported."""
    from flowsr.catalog import ModelLoadError

    errors = [ModelLoadError, ValueError, OSError]
    for module, name in (("flowsr.evaluate", "DataError"), ("flowsr.perceptual", "MetricUnavailable"),
                         ("flowsr.train", "RunInUse"), ("flowsr.nets.imported", "NeedsSpandrel")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


# -- upscale ---------------------------------------------------------------------------------------


def output_path(output_dir: Path, source: Path, suffix: str, ext: str = "png") -> Path:
    """Output file for ``source``: its stem + ``suffix`` + "." + ``ext`` (png, jpg, webp; auto: the source's
    if it is one of those, else png), always directly inside ``output_dir``.

    Only the file name of ``source`` is used; path separators, control characters and undecodable
    bytes (in the name and in ``suffix``) become "_", leading dots are dropped (no hidden files, no
    "..") and the stem is cut so the name fits in 255 bytes: no input can make the output escape.
    """
    import unicodedata

    def clean(text: str) -> str:
        return "".join("_" if c in "/\\" or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") else c
                       for c in text)

    if ext == "auto":
        ext = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}.get(Path(source).suffix.lower(), "png")
    suffix = clean(suffix)
    room = 255 - len(f"{suffix}.{ext}".encode())
    if room < 5:
        raise ValueError(f"--suffix {suffix!r} is too long for a file name")
    stem = clean(Path(Path(source).name).stem).lstrip(".")
    stem = stem.encode()[:room].decode(errors="ignore") or "image"
    return Path(output_dir) / f"{stem}{suffix}.{ext}"


def _say(text: str, error: bool = False) -> None:
    """Print one line to stdout (stderr if ``error``), escaping what a file name may hold that would
    break the line or the terminal's encoding (control characters, undecodable bytes)."""
    from tqdm import tqdm

    stream = sys.stderr if error else sys.stdout
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    encoding = getattr(stream, "encoding", None) or "utf-8"
    tqdm.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=stream)  # below a bar


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_model_arguments(spec: str, settings) -> None:
    """Check ``--model`` and the sampling settings against the model's config.json alone, without torch, so
    an unknown model or ``--steps 4`` on a one-step model is reported at once; the load checks it all again."""
    from flowsr import catalog
    from flowsr import settings as rules

    path = catalog.model_path(spec)
    if path is None:
        rules.resolve(settings, "bicubic", "bicubic")
        return
    data = catalog.read_config_json(path)
    kind = data.get("kind")
    if kind not in ("flow", "regression", "oftsr", "meanflow", "sr"):
        return  # loading reports what is wrong with the file
    try:
        defaults = data.get("default_steps", 1), data.get("default_t", 1.0), data.get("default_guidance", 1.0)
        for check, value, key in zip((rules.check_steps, rules.check_t, rules.check_guidance), defaults,
                                     ("default_steps", "default_t", "default_guidance")):
            check(value, key)
    except ValueError as error:
        raise catalog.ModelLoadError(f"{path / 'config.json'}: {error}") from None
    rules.resolve(settings, kind, path.resolve().name or str(data.get("name")), *defaults)


def _quiet(*args, **kwargs) -> None:
    """What ranks other than 0 say about the whole job (rank 0 says it once)."""


def cmd_upscale(args) -> int:
    """Upscale the inputs; under torchrun each rank takes every WORLD_SIZE-th of them (see
    :mod:`flowsr.distributed`) and rank 0 prints the merged summary."""
    import os

    with contextlib.ExitStack() as loading:  # from here to the loaded model (torch's import included): said if slow
        from flowsr.catalog import default_model

        show = _show_progress(args) and os.environ.get("RANK", "0") == "0"
        name = f"default ({default_model()})" if args.model == "default" else args.model
        loading.enter_context(_slow(f"loading {name}", show))
        return _upscale(args, loading)


def _upscale(args, loading: contextlib.ExitStack) -> int:
    from flowsr.settings import Settings

    output_dir = Path(args.output)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir}: exists and is not a folder")
    settings = Settings(steps=args.steps, t=args.t, guidance=args.guidance, sampler=args.sampler,
                        color_fix=args.color_fix)
    check_model_arguments(args.model, settings)  # before importing torch and loading anything

    from tqdm import tqdm

    from flowsr import distributed
    from flowsr.io import (
        DEFAULT_MAX_PIXELS,
        ImageReadError,
        list_images,
        read_image,
        remove_stale_temporaries,
        write_image_rows,
    )
    from flowsr.pipeline import auto_tile, image_seed, load, tile_count

    place, device = distributed.start(args.device, args.threads)
    say = _say if place.main else _quiet
    if place.main:
        for stale in remove_stale_temporaries(output_dir):
            _say(f"note: removed {stale}, the temporary file of a write that was interrupted")
    failed: list[str] = []
    for path in args.inputs:
        if not Path(path).exists():
            say(f"error: {path}: no such file or folder", error=True)
            failed.append(path)
    paths, resolved = [], set()
    for path in list_images([p for p in args.inputs if Path(p).exists()]):
        if path.resolve() not in resolved:  # the same file named twice is done once
            paths.append(path)
            resolved.add(path.resolve())
    if not paths:
        say("error: no input images found", error=True)
        distributed.finish(place)
        return EXIT_FAILED
    # never overwrite an input (same name, a symlink or a hard link to it), never write one output twice
    input_ids = {_file_id(p) for p in paths} - {None}
    targets: dict[Path, Path] = {}
    owner: dict[Path, Path] = {}
    for path in paths:
        target = output_path(output_dir, path, args.suffix, args.ext)
        if target.resolve() in resolved or _file_id(target) in input_ids:
            problem = f"output {target} would overwrite an input; use --suffix or another output folder"
        elif target in owner:
            problem = f"output {target} is also the output of {owner[target]}; rename one of them"
        else:
            targets[path] = target
            owner[target] = path
            continue
        say(f"error: {path}: {problem}", error=True)
        failed.append(str(path))
    mine = dict(list(targets.items())[place.rank::place.world])  # this rank's share of the sorted inputs
    written, skipped, failed_here = 0, 0, []
    if targets:
        try:
            model = load(args.model, device=device, dtype=args.dtype)
            loading.close()
        except (RuntimeError, MemoryError) as error:  # e.g. a config.json asking for a huge network
            from flowsr.checkpoint import ModelLoadError

            raise ModelLoadError(f"{args.model}: cannot build the model ({' '.join(str(error).split())})") from None
        model.compile(args.compile)
        if args.allow_large:
            model.max_row_buffers = None
        model.resolve(settings)
        each = f" (each of {place.world} processes)" if place.world > 1 else ""
        say(f"model {model.name} on {model.device}{each}, NFE {model.nfe(settings)} per image")
    max_pixels = None if args.allow_large else DEFAULT_MAX_PIXELS
    bars = _show_progress(args) and place.main  # progress bars on a terminal, one line per image otherwise
    begin = time.perf_counter()
    for index, (path, target) in enumerate(tqdm(mine.items(), desc="upscale", unit="img",
                                                disable=not (bars and len(mine) > 1)), 1):
        if args.skip_existing and target.exists():
            skipped += 1
            continue
        try:
            started = time.perf_counter()
            image = read_image(path, max_pixels=max_pixels)
            height, width = image.rgb.shape[-2:]
            tile = auto_tile(height, width) if args.tile == 0 else max(args.tile, 0)
            size = out_size(height, width, model.scale, args.outscale)
            if size != (height * model.scale, width * model.scale) and not args.allow_large:
                check_resample_memory(path, height * model.scale, width * model.scale, size)
            with tqdm(total=tile_count(height, width, tile, args.tile_overlap), desc=path.name[:40], unit="tile",
                      leave=False, disable=not bars) as image_bar, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rows = model.upscale_image_rows(image, settings, seed=image_seed(args.seed, path.name), tile=tile,
                                                tile_overlap=args.tile_overlap, progress=_bar_progress(image_bar))
                if size != (height * model.scale, width * model.scale):
                    rows = [resampled(rows, size)]  # the whole output, then Lanczos to --outscale
                write_image_rows(target, rows, image.bit_depth, inputs=(path,), color=image.color,
                                 quality=args.quality)  # streamed (PNG at the model's scale), atomic
            for note in image.notes + [" ".join(str(w.message).split()) for w in caught]:
                _say(f"note: {path}: {note.removeprefix(f'{target}: ')}")
            if not bars and not args.quiet:
                _say(f"[{index}/{len(mine)}] {path} -> {target} ({width}x{height} -> {size[1]}x{size[0]}, "
                     f"{time.perf_counter() - started:.1f} s)")
            written += 1
        except (ImageReadError, ValueError, OSError, MemoryError, RuntimeError) as error:
            detail = str(error) or type(error).__name__
            if isinstance(error, MemoryError) or "out of memory" in detail.lower():
                detail = f"out of memory ({detail})"
            _say(f"error: {detail}" if str(path) in detail else f"error: {path}: {detail}", error=True)
            failed_here.append(str(path))
    counts = distributed.all_gather((written, skipped, len(failed_here), time.perf_counter() - begin), place)
    written, skipped = sum(c[0] for c in counts), sum(c[1] for c in counts)
    n_failed = len(failed) + sum(c[2] for c in counts)
    summary = f"{written} written, {skipped} skipped, {n_failed} failed -> {output_dir}"
    if place.launched:  # under torchrun: the rate of the whole job, from the slowest rank's time
        rate = written / max(max(c[3] for c in counts), 1e-9)
        summary += f" ({place.world} process{'es' if place.world > 1 else ''}, {rate:.2f} images/s)"
    say(summary)
    sys.stdout.flush()
    distributed.finish(place)
    return EXIT_FAILED if n_failed else 0


def out_size(height: int, width: int, scale: int, outscale: float | None) -> tuple[int, int]:
    """The (height, width) ``flowsr upscale`` writes: the model's ``scale`` times the input, or with ``--outscale``
    outscale x each side rounded half up, at least 1 pixel."""
    if outscale is None:
        return height * scale, width * scale
    return max(1, math.floor(outscale * height + 0.5)), max(1, math.floor(outscale * width + 0.5))


def check_resample_memory(path: Path, height: int, width: int, size: tuple[int, int]) -> None:
    """ValueError unless the model's whole output (held for ``--outscale``'s resampling) and the resampled one fit
    in the limit of the streamed rows (:data:`flowsr.pipeline.MAX_ROW_BUFFERS`)."""
    from flowsr.pipeline import MAX_ROW_BUFFERS

    need = 4 * 4 * (height * width + size[0] * size[1])  # float32 RGBA, before and after
    if need > MAX_ROW_BUFFERS:
        raise ValueError(f"{path}: --outscale holds the whole {width}x{height} output to resample it, about "
                         f"{need / 2**30:.1f} GiB (limit {MAX_ROW_BUFFERS / 2**30:g} GiB); pass --allow-large to "
                         "try anyway, or leave --outscale out")


def resampled(rows, size: tuple[int, int]):
    """The (rgb, alpha) row bands of one image, joined and resampled to ``size`` (height, width) with Lanczos."""
    import torch

    from flowsr.ops import lanczos

    bands = list(rows)
    rgb = lanczos(torch.cat([rgb for rgb, _ in bands], dim=1), size)
    alpha = lanczos(torch.cat([alpha for _, alpha in bands], dim=1), size) if bands[0][1] is not None else None
    return rgb, alpha


def _show_progress(args) -> bool:
    """Progress bars go to stderr, and only when it is a terminal and ``--quiet`` is not given."""
    return sys.stderr.isatty() and not getattr(args, "quiet", False)


def _bar_progress(bar):
    """A ``progress(done, total)`` callback (see :meth:`flowsr.pipeline.Upscaler.upscale_rows`) moving ``bar``."""

    def update(done: int, total: int) -> None:
        if bar.total != total or done < bar.n:
            bar.reset(total=total)
        bar.update(done - bar.n)

    return update


@contextlib.contextmanager
def _slow(what: str, show: bool):
    """Around a step that may take long (loading a model): if it takes more than :data:`SLOW` seconds and
    ``show``, say ``what`` on stderr when that time is reached, and how long it took at the end."""
    begin, said = time.perf_counter(), threading.Event()

    def say() -> None:
        print(f"{what} ...", file=sys.stderr, flush=True)
        said.set()

    timer = threading.Timer(SLOW, say)
    timer.daemon = True
    if show:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if said.is_set():
            print(f"{what}: done in {time.perf_counter() - begin:.1f} s", file=sys.stderr, flush=True)


# -- eval ------------------------------------------------------------------------------------------


def cmd_eval(args) -> int:
    """Score models on a folder; under torchrun each rank scores every WORLD_SIZE-th image and rank 0
    prints and writes the results of the whole set."""
    from flowsr import distributed
    from flowsr.evaluate import Dataset, check_metrics, evaluate, format_table, load_dataset, no_reference_metrics
    from flowsr.pipeline import Settings, load
    from flowsr.settings import ONE_STEP_KINDS

    place, device = distributed.start(args.device, args.threads)
    say = print if place.main else _quiet
    metrics = check_metrics([m.strip() for m in args.metrics.split(",") if m.strip()])
    if args.json:
        _refuse_an_input(Path(args.json), args.data, "--json")
    dataset = load_dataset(args.data, args.scale, args.protocol, part=(place.rank, place.world))
    errors = [e for part in distributed.all_gather(dataset.errors, place) for e in part]
    n_samples = sum(distributed.all_gather(len(dataset.samples), place))
    for message in errors:
        say(f"error: {message}", file=sys.stderr)
    if not n_samples:
        say(f"error: {args.data}: no image could be evaluated", file=sys.stderr)
        distributed.finish(place)
        return EXIT_FAILED
    if dataset.protocol == "no-reference":
        metrics, dropped = no_reference_metrics(metrics)
        if dropped:
            say(f"note: {dataset.name} has no ground truth: {', '.join(dropped)} not computed")
        say(f"dataset {dataset.name}: {n_samples} images, no-reference protocol (x{args.scale} upscaled, "
            f"{', '.join(metrics)} on the outputs)")
    else:
        say(f"dataset {dataset.name}: {n_samples} images, {dataset.protocol} protocol "
            f"(x{args.scale}, crop_border={dataset.crop_border}, PSNR/SSIM on Y)")
    grid = [g.strip() for g in args.grid.split(",")] if args.grid else []
    unknown = sorted(set(grid) - set(dataset.names))
    if unknown:
        raise ValueError(f"--grid: {unknown} not in {args.data}")
    reference = None
    if args.reference:
        from flowsr.evaluate import Reference
        from flowsr.perceptual import _PIP_LPIPS

        reference = Reference(load(args.reference, device=device, dtype=args.dtype, scale=args.scale),
                              steps=args.reference_steps, guidance=args.reference_guidance)
        if not reference.lpips:
            say(f"note: LPIPS weights missing, ref_lpips is left out ({_PIP_LPIPS})", file=sys.stderr)
    from tqdm import tqdm

    show = _show_progress(args) and place.main
    rows = []
    for spec in args.model:
        with _slow(f"loading {spec}", show):
            model = load(spec, device=device, dtype=args.dtype, scale=args.scale)
        kind = model.config.kind if model.config else "bicubic"
        steps_list = args.steps or [None]
        t_list = (args.t or [None]) if kind in ("oftsr", "meanflow") else [None]
        for steps in steps_list:
            for t in t_list:
                settings = Settings(steps=steps, t=t, guidance=args.guidance, sampler=args.sampler,
                                    color_fix=args.color_fix)
                if kind == "meanflow" and steps not in (None, 1) and t not in (None, 1.0):
                    continue  # the knob applies to one-step sampling only
                if kind in ONE_STEP_KINDS and steps not in (None, 1):
                    continue  # one-step models have no step count to sweep
                save = None
                if args.save:
                    tag = f"{model.name}_steps{steps or 'default'}" + (f"_t{t:g}" if t is not None else "")
                    save = Path(args.save) / tag
                label = f"{model.name}" + (f" steps {steps}" if steps else "") + (f" t {t:g}" if t is not None else "")
                with tqdm(total=len(dataset.samples), desc=label, unit="img", leave=False, disable=not show) as bar:
                    rows.append(evaluate(model, dataset, settings, metrics, seed=args.seed, save=save,
                                         tile=args.tile, keep=tuple(grid), fid_patch=args.fid_patch,
                                         reference=reference, place=place, progress=_bar_progress(bar)))
    if place.main:
        print(format_table(rows, verbose=args.verbose))
        if args.report:
            grid_set = load_dataset(args.data, args.scale, dataset.protocol, only=set(grid)) if grid else dataset
            write_report(Path(args.report), rows, Dataset(dataset.name, dataset.protocol, dataset.crop_border,
                                                          grid_set.samples), grid)
        for row in rows:
            row.pop("images", None)
        if args.json:
            # one layout for one row or a sweep
            payload = {"dataset": dataset.name, "protocol": dataset.protocol, "results": rows}
            from flowsr.checkpoint import atomic_write

            atomic_write(Path(args.json), lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))
            print(f"wrote {args.json}")
    sys.stdout.flush()
    distributed.finish(place)
    return EXIT_FAILED if errors else 0


def _refuse_an_input(target: Path, data: str, option: str) -> None:
    """ValueError if ``target`` is one of the images of ``data`` (a file, or a folder with HR/ and LR/)."""
    from flowsr.io import list_images

    folder = Path(data)
    inputs = list_images([folder, *(folder / side for side in ("HR", "LR") if (folder / side).is_dir())])
    if _file_id(target) is not None and _file_id(target) in {_file_id(p) for p in inputs}:
        raise ValueError(f"{option} {target}: is an input image of {data}; refusing to overwrite it")


def write_report(directory: Path, rows: list[dict], dataset, grid: list[str]) -> None:
    """results.md (+ tradeoff.png with LPIPS, knob.png for a t sweep, grid_<image>.png) for a sweep."""
    from flowsr import report
    from flowsr.ops import imresize

    directory.mkdir(parents=True, exist_ok=True)
    title = f"{dataset.name} x{rows[0]['scale']} ({dataset.protocol}, {rows[0]['device']})"
    (directory / "results.md").write_text(f"### {title}\n\n{report.markdown_table(rows)}\n")
    written = ["results.md"]
    try:
        if any("lpips" in r["metrics"] for r in rows):
            report.tradeoff_plot(rows, directory / "tradeoff.png", title)
            written.append("tradeoff.png")
        if report.knob_sweeps(rows):
            report.knob_plot(rows, directory / "knob.png", title)
            written.append("knob.png")
        for name in grid:
            sample = next(s for s in dataset.samples if s.name == name)
            shape = rows[0]["images"][name].shape[:2]  # the HR size
            up = imresize(sample.lq, size=shape)
            panels = [("LR", sample.lq), ("bicubic", up)]
            panels += [(report.label(r), r["images"][name]) for r in rows if r["kind"] != "bicubic"]
            if sample.gt is not None:
                panels.append(("HR", sample.gt))
            size = min(96, *shape)
            box = ((shape[0] - size) // 2, (shape[1] - size) // 2, size)
            report.comparison_grid(panels, directory / f"grid_{Path(name).stem}.png", box)
            written.append(f"grid_{Path(name).stem}.png")
    except ImportError:
        print("note: plots need matplotlib (pip install matplotlib); wrote the table only")
    print(f"wrote {', '.join(written)} to {directory}")


# -- train -----------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from flowsr.config import apply_overrides, load_yaml_overrides, preset
    from flowsr.train import RunInUse, TrainingDiverged, train

    cfg = preset(args.preset)
    overrides = (load_yaml_overrides(args.config) if args.config else []) + list(args.overrides)
    apply_overrides(cfg, overrides)
    if not cfg.data:
        raise ValueError("no training data: pass data=DIR (default ../shared/data/train is absent)")
    try:
        train(cfg, args.out, resume=args.resume)
    except (TrainingDiverged, RunInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


# -- shard -----------------------------------------------------------------------------------------


def cmd_shard(args) -> int:
    from flowsr.shards import write_shards

    count, errors = write_shards(args.source, args.output, args.shard_size, say=_say)
    for message in errors:
        _say(f"error: {message}", error=True)
    _say(f"{count} images written, {len(errors)} failed -> {args.output}")
    return EXIT_FAILED if errors else 0


# -- degrade ---------------------------------------------------------------------------------------


def cmd_degrade(args) -> int:
    import torch

    from flowsr.io import ImageReadError, list_images, read_image, write_image
    from flowsr.ops import imresize, modcrop

    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    paths = list_images([source])
    if not paths:
        print(f"error: {source}: no images found", file=sys.stderr)
        return EXIT_FAILED
    output_dir = Path(args.output)
    degrade = None
    if args.kind == "realesrgan":
        from flowsr.degradations import RealESRGANConfig
        from flowsr.degradations import degrade as realesrgan

        cfg = RealESRGANConfig.from_yaml(args.config) if args.config else RealESRGANConfig()
        degrade = (cfg, realesrgan)
    failed = 0
    inputs = tuple(p.resolve() for p in paths)
    for path in paths:
        try:
            image = read_image(path)
            rgb = image.rgb
            if min(rgb.shape[-2:]) < args.scale:
                raise ImageReadError(f"{path}: smaller than the scale {args.scale}")
            if degrade is None:
                hr = (modcrop(rgb, args.scale) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                lq = torch.from_numpy(imresize(hr, scale=1 / args.scale)).float().div(255)
                lq = lq.reshape(lq.shape[0], lq.shape[1], -1).permute(2, 0, 1)
            else:
                from flowsr.pipeline import image_seed

                cfg, realesrgan = degrade
                generator = torch.Generator().manual_seed(image_seed(args.seed, path.name))
                rgb3 = rgb.expand(3, -1, -1) if rgb.shape[0] == 1 else rgb
                lq = realesrgan(modcrop(rgb3, args.scale)[None], cfg, scale=args.scale,
                                generator=generator)[0]
            write_image(output_path(output_dir, path, ""), lq, inputs=inputs)
        except (ImageReadError, ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    print(f"{len(paths) - failed} written, {failed} failed -> {output_dir}")
    return EXIT_FAILED if failed else 0


# -- models ----------------------------------------------------------------------------------------


def cmd_models(args) -> int:
    from flowsr.catalog import bundled_models, default_model, parameter_count, read_config_json

    rows = [["name", "task", "scale", "params", "defaults", "trained"],
            ["bicubic", "baseline", "any", "0", "NFE 0", "-"]]
    default = default_model()
    for name, path in bundled_models().items():  # from the files' headers: no torch, no network built
        config = read_config_json(path)
        kind, info = config.get("kind", "?"), config.get("training", {})
        params = parameter_count(path / "model.safetensors")
        steps, wall = info.get("steps_total", info.get("steps", "?")), info.get("wall_seconds_total",
                                                                                info.get("wall_seconds", "?"))
        trained = (f"{steps} steps, batch {info.get('batch_size', '?')}, {wall} s on {info.get('device', '?')}"
                   f"{' (over several runs)' if 'steps_total' in info else ''}; data {info.get('data', '?')}")
        if kind == "sr":
            trained = f"published weights: {info.get('source', '?')}"
        defaults = f"steps {config.get('default_steps', 1)}" + (
            f", t {config.get('default_t', 1.0):g}" if kind in ("oftsr", "meanflow") else "")
        rows.append([name + (" (default)" if name == default else ""), kind, f"x{config.get('scale', '?')}",
                     f"{params / 1e6:.2f}M", defaults, trained])
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5])
    for name, path in bundled_models().items():  # published networks: their licence and attribution
        config = read_config_json(path)
        if config.get("attribution"):
            print(f"\n{name}: {config['attribution']}\n  licence: {path / config.get('licence', 'LICENSE')}")
    return 0


def cmd_export(args) -> int:
    from flowsr.catalog import check_export_target

    check_export_target(args.model, Path(args.output), args.force)  # before torch is imported: in milliseconds
    from flowsr.onnx_export import export

    show = _show_progress(args)
    begin = time.perf_counter()

    def progress(step: str) -> None:  # export takes seconds to minutes: say each step, with the time so far
        if show:
            print(f"[{time.perf_counter() - begin:5.1f} s] {step}", file=sys.stderr, flush=True)

    spec = export(args.model, args.output, opset=args.opset, dtype=args.dtype, force=args.force, progress=progress)
    check = spec["check"]
    size_mb = (Path(args.output) / spec["file"]).stat().st_size / 2**20
    start = json.loads((Path(args.output) / "config.json").read_text())["start"]
    print(f"wrote {Path(args.output) / spec['file']} ({spec['dtype']}, opset {spec['opset']}, {size_mb:.1f} MB) "
          f"and config.json{'' if start == 'bicubic' else f', its start network in {start}/'}; one call through "
          f"ONNX Runtime vs torch float32 at {tuple(check['shape'])}: max abs difference {check['max_abs_diff']:.2g}")
    return 0


def cmd_import(args) -> int:
    from flowsr.importing import check_target

    check_target(Path(args.output), args.force)  # before torch is imported
    from flowsr.importing import import_network

    show, begin = _show_progress(args), time.perf_counter()

    def progress(step: str) -> None:
        if show:
            print(f"[{time.perf_counter() - begin:5.1f} s] {step}", file=sys.stderr, flush=True)

    done = import_network(args.file, args.output, force=args.force, progress=progress)
    print(f"wrote {args.output}: {done['name']} (spandrel {done['arch']}), x{done['scale']}, "
          f"{done['params'] / 1e6:.2f}M parameters; flowsr's network vs spandrel's call: max abs difference "
          f"{done['max_abs_diff']:.2g}. Use it as --model {args.output}")
    return 0


def _serve(args) -> int:
    problem = None
    if not 0 <= args.port <= 65535:
        problem = f"--port must be in 0..65535 (0: any free port), got {args.port}"
    for name in ("max_upload_mb", "max_megapixels", "max_memory_gb"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            problem = f"--{name.replace('_', '-')} must be a positive number, got {value:g}"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from flowsr import serve

    return serve.run(args)


# -- bench -----------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    from flowsr import bench
    from flowsr.pipeline import Settings, load, resolve_device

    if args.train:
        rows = bench_training(args)
        keys = ["objective", "path", "bf16", "channels_last", "compile", "batch", "crop", "steps_per_s", "crops_per_s",
                "speedup", "step_ms", "loss_ms", "speedup_bound", "vs_flow_matching", "gflop_per_step",
                "achieved_tflops"]
        keys += [k for k in rows[0] if k.startswith("fraction_of")]
    else:
        rows = []
        for spec in args.model:
            model = load(spec, device=args.device, dtype=args.dtype)
            kind = model.config.kind if model.config else "bicubic"
            steps_list = args.steps if kind in ("flow", "meanflow") and args.steps else [None]
            for _ in _runtime_variants(model, args):
                for size in args.size:
                    for steps in steps_list:
                        settings = Settings(steps=steps, t=args.t if kind in ("oftsr", "meanflow") else None)
                        rows.append(bench.bench_inference(model, settings, size, args.batch, repeat=args.repeat))
        device = resolve_device(args.device)
        if args.matmul and device.type == "cuda":
            peak = bench.matmul_tflops(device)
            for row in rows:
                row["matmul_tflops"] = peak
                row["fraction_of_matmul"] = row["achieved_tflops"] / peak
        keys = ["model", "backend", "compile", "threads", "steps", "nfe", "size", "batch", "latency_ms_median",
                "latency_ms_p90", "megapixels_per_s", "peak_memory_mb", "gflops_per_image", "achieved_tflops"]
        if any(row["backend"] == "onnxruntime" for row in rows):
            keys[3:3] = ["ort_optimization", "ort_execution"]
        if any(row.get("working_memory_mb") is not None for row in rows):
            keys.insert(keys.index("peak_memory_mb") + 1, "working_memory_mb")
        for row in rows:  # what each model, backend and setting buys: against the first row of its size and steps
            same = [r for r in rows if (r["size"], r["steps"], r["batch"]) == (row["size"], row["steps"], row["batch"])]
            row["speedup_vs_first"] = same[0]["latency_ms_median"] / row["latency_ms_median"]
        keys.insert(keys.index("megapixels_per_s") + 1, "speedup_vs_first")
        if args.matmul and device.type == "cuda":
            keys.append("fraction_of_matmul")
    print(bench.format_rows(rows, keys))
    if args.json:
        import shlex

        from flowsr.checkpoint import atomic_write

        payload = {"command": "flowsr " + shlex.join(args.argv), "machine": bench.machine(args.device),
                   "rows": rows}
        atomic_write(Path(args.json), lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))
        print(f"wrote {args.json}")
    return 0


def _runtime_variants(model, args):
    """Set ``model`` to each runtime variant to time in turn: torch.compile modes for torch networks, ONNX
    Runtime session settings (threads x optimisation level x execution mode) for ONNX models."""
    if model.backend == "torch" and model.net is not None:
        for mode in args.compile:
            model.compile(mode)
            yield mode
        return
    if model.backend == "torch":  # bicubic
        yield "none"
        return
    from itertools import product

    from flowsr.onnx_backend import OrtOptions

    for threads, level, execution in product(args.ort_threads or [None], args.ort_opt, args.ort_execution):
        model.net = model.net.with_options(OrtOptions(threads=threads, optimization=level, execution=execution))
        yield model.net.options


def bench_training(args) -> list[dict]:
    """Training throughput of each objective on ``--train``'s network, for each path of ``--paths`` (``old``:
    ``fast=false``, the path before issue 21; ``fast``: ``fast=true``; ``compiled``: ``fast=true compile=true``),
    in one run: crops/s of real ``flowsr train`` runs (data feed included; flowsr.bench.train_speed), the loss
    forward and backward alone in the path's precision and layout (flowsr.bench.train_loss_seconds;
    ``speedup_bound``: the first path's step time over it, the most the path could gain without any data feed,
    optimizer or sync), FLOPs per step counted on one step, and the achieved fraction of the device's measured
    matmul rate (bf16; on the CPU also fp32)."""
    import dataclasses
    import tempfile

    import torch

    from flowsr import bench
    from flowsr.checkpoint import save_model_dir
    from flowsr.config import OBJECTIVES, preset
    from flowsr.nets import UNet
    from flowsr.pipeline import resolve_device
    from flowsr.train import _start_sha, model_config, runtime_options

    if not args.paths or set(args.paths) - {"old", "fast", "compiled"}:
        raise ValueError(f"--paths: old, fast and/or compiled, not {','.join(args.paths)}")
    objectives = args.objectives or list(OBJECTIVES)
    if set(objectives) - set(OBJECTIVES):
        raise ValueError(f"--objectives: some of {', '.join(OBJECTIVES)}, not {','.join(objectives)}")
    device = resolve_device(args.device)
    peaks = {"bf16": bench.matmul_tflops(device)}
    if device.type == "cpu":
        peaks["fp32"] = bench.matmul_tflops(device, dtype=torch.float32)
    base = preset(args.train)
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowsr-bench-") as tmp:
        data = args.data or base.data
        if not data or not Path(data).is_dir():
            data = _random_images(Path(tmp) / "data", count=32, size=max(256, 2 * (args.crop or base.crop)))
        teacher = Path(tmp) / "teacher"  # a random teacher for the students (their speed does not depend on it)
        save_model_dir(teacher, UNet(base.net), model_config(
            dataclasses.replace(base, objective="flow_matching"), {}, _start_sha(base.start)))
        for objective in objectives:
            cfg = _preset_of(args.train, objective)
            cfg.net, cfg.start, cfg.sigma_p, cfg.data = base.net, base.start, base.sigma_p, data
            cfg.device, cfg.teacher = device.type, str(teacher) if objective in ("oftsr", "meanflow") else ""
            cfg.batch_size = args.batch if args.batch > 1 else base.batch_size
            cfg.crop = args.crop or base.crop
            speeds, losses = {}, {}
            for attempt, path in enumerate(args.paths * args.rounds):  # alternating, the fastest of each path kept
                cfg.fast, cfg.compile = path != "old", "true" if path == "compiled" else "auto"
                speed = bench.train_speed(cfg, Path(tmp) / f"{objective}-{path}-{attempt}", steps=args.repeat)
                if path not in speeds or speed["steps_per_s"] > speeds[path]["steps_per_s"]:
                    speeds[path] = speed
                if path != "compiled":  # (the loss alone is timed eager)
                    seconds = bench.train_loss_seconds(cfg, device, steps=args.repeat)
                    losses[path] = min(seconds, losses.get(path, seconds))
            for path in args.paths:
                cfg.fast, cfg.compile = path != "old", "true" if path == "compiled" else "auto"
                speed = speeds[path]
                flops = bench.train_step_flops(cfg, device)
                bf16, channels_last, compiled = runtime_options(cfg, device)
                row = {"objective": objective, "path": path, "preset": cfg.preset, "bf16": bf16,
                       "channels_last": channels_last, "compile": compiled, "batch": cfg.batch_size,
                       "crop": cfg.crop, "device": str(device), "threads": torch.get_num_threads(), **speed,
                       "step_ms": 1e3 / speed["steps_per_s"],
                       "loss_ms": 1e3 * losses[path] if path in losses else None,
                       "gflop_per_step": flops / 1e9, "achieved_tflops": flops * speed["steps_per_s"] / 1e12}
                for dtype, peak in peaks.items():
                    row[f"matmul_{dtype}_tflops"] = peak
                    row[f"fraction_of_{dtype}_matmul"] = row["achieved_tflops"] / peak
                rows.append(row)
    for row in rows:  # against the first path of the same objective
        first = next(r for r in rows if r["objective"] == row["objective"])
        row["speedup"] = row["crops_per_s"] / first["crops_per_s"]
        # the most this path could gain with no data feed, optimizer or sync at all: first step / own loss
        row["speedup_bound"] = first["step_ms"] / row["loss_ms"] if row["loss_ms"] else None
        # a step against the flow-matching step of the same path (issue 21's R2: MeanFlow's JVP overhead)
        matching = next((r for r in rows if r["objective"] == "flow_matching" and r["path"] == row["path"]), None)
        row["vs_flow_matching"] = row["step_ms"] / matching["step_ms"] if matching else None
    return rows


def _preset_of(name: str, objective: str):
    """The preset of ``name``'s family for ``objective`` (tiny-teacher-pm, meanflow -> tiny-meanflow-pm), else
    ``name``'s own preset with that objective."""
    from flowsr.config import PRESETS, preset

    words = {"flow_matching": "teacher", "regression": "regression", "oftsr": "oftsr", "meanflow": "meanflow"}
    parts = name.split("-")
    family = ["{}" if part in words.values() else part for part in parts]
    candidate = "-".join(family).format(words[objective]) if "{}" in family else ""
    cfg = preset(candidate if candidate in PRESETS else name)
    cfg.objective = objective
    return cfg


def _random_images(folder: Path, count: int, size: int) -> str:
    """``count`` random RGB PNGs of ``size`` x ``size`` in ``folder`` (a training set when none is given)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return str(folder)


if __name__ == "__main__":
    sys.exit(main())
