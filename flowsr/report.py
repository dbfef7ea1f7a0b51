"""Reports from evaluation rows: a Markdown table, the fidelity–perception plot, comparison grids.

Rows are the dicts :func:`flowsr.evaluate.evaluate` returns. Plots need matplotlib
(``pip install flowsr[report]``); the Markdown table does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = [("psnr_y", "PSNR-Y"), ("ssim_y", "SSIM-Y"), ("lpips", "LPIPS"), ("dists", "DISTS"),
           ("niqe", "NIQE"), ("fid", "FID (patch)"), ("kid", "KID (patch)"), ("hf_ratio", "HF ratio"),
           ("ref_psnr_y", "ref PSNR-Y"), ("ref_lpips", "ref LPIPS")]


def label(row: dict) -> str:
    """``model`` plus the sampling settings that distinguish the row (steps for multi-step, t for students)."""
    parts = [row["model"]]
    if row["kind"] in ("flow", "meanflow") and row["steps"] != 1 or row["kind"] == "flow":
        parts.append(f"{row['steps']} step" + ("s" if row["steps"] != 1 else ""))
    if row.get("t") is not None and row["steps"] == 1:
        parts.append(f"t={row['t']:g}")
    if row.get("guidance") not in (None, 1.0):
        parts.append(f"w={row['guidance']:g}")
    return ", ".join(parts)


def markdown_table(rows: list[dict], latency: bool = True) -> str:
    """One Markdown row per configuration, metric columns present in any row."""
    present = [(k, name) for k, name in COLUMNS if any(k in r["metrics"] for r in rows)]
    header = ["method", "NFE", *[name for _, name in present]] + (["s/image"] if latency else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [label(row), str(row["nfe"])]
        cells += [_fmt(row["metrics"].get(k)) for k, _ in present]
        if latency:
            cells.append(f"{row['seconds_per_image']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def tradeoff_series(rows: list[dict]) -> dict[str, list[dict]]:
    """The lines of :func:`tradeoff_plot`: the rows with PSNR-Y and LPIPS, one line per model and guidance
    scale (``"model"``, or ``"model, w=1.5"`` for guided rows), in row order."""
    series: dict[str, list[dict]] = {}
    for row in rows:
        if "lpips" in row["metrics"] and "psnr_y" in row["metrics"]:
            guidance = row.get("guidance")
            name = row["model"] + (f", w={guidance:g}" if guidance not in (None, 1.0) else "")
            series.setdefault(name, []).append(row)
    return series


def tradeoff_plot(rows: list[dict], path: str | Path, title: str = "") -> None:
    """PSNR-Y (fidelity) against LPIPS (perception, lower is better), one labelled point per row, one line per
    model and guidance scale (:func:`tradeoff_series`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for name, points in tradeoff_series(rows).items():
        xs = [r["metrics"]["lpips"] for r in points]
        ys = [r["metrics"]["psnr_y"] for r in points]
        ax.plot(xs, ys, "o-" if len(points) > 1 else "o", label=name)
        for r, x, y in zip(points, xs, ys):
            text = label(r)[len(r["model"]) + 2:] or f"NFE {r['nfe']}"
            ax.annotate(f"{text} (NFE {r['nfe']})" if "NFE" not in text else text, (x, y), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("LPIPS (AlexNet) ↓  — perception")
    ax.set_ylabel("PSNR-Y (dB) ↑  — fidelity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def knob_sweeps(rows: list[dict]) -> dict[str, list[dict]]:
    """Per model, its one-step rows sorted by t, for models swept over two or more values of t."""
    sweeps = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        points = sorted((r for r in rows if r["model"] == model and r["steps"] == 1 and r.get("t") is not None),
                        key=lambda r: r["t"])
        if len(points) > 1:
            sweeps[model] = points
    return sweeps


def knob_plot(rows: list[dict], path: str | Path, title: str = "") -> None:
    """A one-step student's knob: PSNR-Y (left axis) and the realism metrics present (HF ratio, LPIPS,
    DISTS; right axis) against t, one line per model swept over more than one t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(7, 4.5), dpi=110)
    right = left.twinx()
    for model, points in knob_sweeps(rows).items():
        ts = [r["t"] for r in points]
        left.plot(ts, [r["metrics"]["psnr_y"] for r in points], "o-", color="k", label=f"{model}: PSNR-Y")
        for key, name, style in (("hf_ratio", "HF ratio ↑", "s--"), ("lpips", "LPIPS ↓", "^:"),
                                 ("dists", "DISTS ↓", "v:")):
            if all(key in r["metrics"] for r in points):
                right.plot(ts, [r["metrics"][key] for r in points], style, label=f"{model}: {name}")
    left.set_xlabel("t (0 = fidelity end, 1 = realism end), 1 NFE")
    left.set_ylabel("PSNR-Y (dB)")
    right.set_ylabel("HF ratio / LPIPS / DISTS")
    handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
    left.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="center left")
    left.grid(alpha=0.3)
    left.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def comparison_grid(panels: list[tuple[str, np.ndarray]], path: str | Path, box: tuple[int, int, int],
                    zoom: int = 3) -> None:
    """Zoomed crops side by side: ``panels`` = [(title, HWC uint8 image at HR size)], ``box`` = (top, left, size).

    The LR panel may be given at LR size: it is shown nearest-neighbour enlarged to the same crop.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top, left, size = box
    hr_height = max(image.shape[0] for _, image in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5), dpi=110)
    for ax, (title, image) in zip(np.atleast_1d(axes), panels):
        factor = hr_height // image.shape[0]
        if factor > 1:  # an LR image: the same region, enlarged without interpolation
            crop = image[top // factor:(top + size) // factor, left // factor:(left + size) // factor]
            crop = crop.repeat(factor, 0).repeat(factor, 1)
        else:
            crop = image[top:top + size, left:left + size]
        ax.imshow(crop.repeat(zoom, 0).repeat(zoom, 1), interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
