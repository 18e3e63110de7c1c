"""Rate-distortion benchmark, results: the Markdown report and the PSNR-against-bpp plot."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from .bdrate import rd_front
from .common import header, md_table, num, pyplot
from .rd_codecs import CODECS
from .rd_sources import PYRAMID_TILE

__all__ = ["plot", "report"]

PYRAMID_HEAD = (
    "Q",
    "levels",
    "level 0 (B)",
    "level 0 bpp",
    "lower levels (B)",
    "lower levels bpp",
    "file (B)",
    "file bpp",
    "level 0 PSNR",
    "level 0 SSIM",
)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


def _bd_hashgrid(result: dict[str, Any], codecs: list[str]) -> list[str]:
    """The hash-grid cinr BD-rate table."""
    lines = ["## BD-rate of cinr against each codec\n"]
    lines.append("| image | cinr curve | " + " | ".join(codecs) + " |")
    lines.append("|---|---|" + "---:|" * len(codecs))
    for im in result["images"]:
        lines.append(
            f"| {im['image']} | all points | " + " | ".join(_pct(im["bd_rate"][c]) for c in codecs) + " |"
        )
        if im["bd_rate_default_preset"]:
            lines.append(
                f"| {im['image']} | default preset | "
                + " | ".join(_pct(im["bd_rate_default_preset"][c]) for c in codecs)
                + " |"
            )
    lines.append("| **mean** | all points | " + " | ".join(_pct(result["bd_rate"][c]) for c in codecs) + " |")
    if result["bd_rate_default_preset"]:
        lines.append(
            "| **mean** | default preset | "
            + " | ".join(_pct(result["bd_rate_default_preset"][c]) for c in codecs)
            + " |"
        )
    lines.append("")
    return lines


def grid_note(im: dict[str, Any]) -> str:
    """For a JPEG source: whether the region lies on its 8x8 grid, which decides what the block
    codecs pay (``benchmarks.jpeg_grid``); "" for other sources."""
    comp = str(im.get("source_tiles", {}).get("compression", ""))
    if not comp.upper().startswith("JPEG") or "2000" in comp:
        return ""
    dx, dy = im["region"]["x"] % 8, im["region"]["y"] % 8
    if dx == dy == 0:
        return (
            " The region lies on the source JPEG's 8x8 grid: the block codecs re-hit its "
            "quantisation and need fewer bits than off it (`jpeg_grid.md`)."
        )
    return (
        f" The region lies ({dx}, {dy}) px off the source JPEG's 8x8 grid: the block codecs cannot "
        "re-hit its quantisation and need more bits than on it (`jpeg_grid.md`)."
    )


def report(result: dict[str, Any], extra: dict[str, str], png_name: str | None) -> str:
    """Markdown: header, method, per image (region, source tiles, pyramid, rows, equal-PSNR), BD-rates."""
    codecs = result["codecs"]
    lines = [header("Rate-distortion: cinr and ccinr against JPEG, JPEG 2000, JPEG XL, AVIF, WebP", extra)]
    s = result["settings"]
    steps = ", ".join(f"{p}: {'preset default' if v is None else v}" for p, v in s["steps"].items())
    if s["presets"]:
        hashgrid = (
            f"cinr (hash grid): presets {', '.join(s['presets'])} (steps {steps}; fitted once per preset), "
            f"stored at {', '.join(s['quants'])}"
        )
    else:
        hashgrid = "cinr (hash grid): not run (`--no-cinr`)"
    if s["qualities"]:
        ccinr = (
            f"ccinr (compressive CINR, entropy-coded latents): quality levels {', '.join(s['qualities'])} "
            "(λ "
            + ", ".join(f"{q} {lam:.3g}" for q, lam in s["ccinr_lambdas"].items())
            + f"), {s['ccinr_steps']} training steps each, one encode per level"
            + (
                f" ({s['ccinr_jobs']} at a time, in worker processes of one torch thread)"
                if (s.get("ccinr_jobs") or 1) > 1
                else ""
            )
        )
    else:
        ccinr = "ccinr: not run (`--no-ccinr`)"
    lines.append(
        f"Regions: {s['size']} px side, {s['region_how']}. {hashgrid}. {ccinr}. bpp = whole `.cinr` "
        "file bytes × 8 / region pixels (header, network weights and latents: the network bits are "
        f"counted at this {s['size']} px region size, and weigh less per pixel on larger regions), "
        "PSNR/SSIM of the decoded file (after quantization). Codecs: "
        + "; ".join(result["codec_labels"][c] for c in codecs)
        + ". PSNR on 8-bit RGB (data range 255), SSIM as `cinr_codec.core.metrics.ssim`. "
        "BD-rate: Bjøntegaard delta rate, PCHIP of log-rate against PSNR over the overlapping PSNR "
        "interval (`benchmarks/bdrate.py`), of cinr against each codec; negative = cinr needs fewer bits. "
        "The cinr curve is the rate-distortion front of all cinr points of an image (both presets, every "
        "precision; dominated points dropped); *default preset* uses only that preset's points. "
        "n/a: the curves do not overlap in PSNR or a curve has < 2 points.\n"
    )
    if result["skipped"]:
        lines.append("Skipped: " + "; ".join(f"{c} ({why})" for c, why in result["skipped"].items()) + ".\n")
    if s["presets"]:
        lines += _bd_hashgrid(result, codecs)
    if s["qualities"]:
        w0, w1 = s["bd_window_db"]
        lines.append(f"## BD-rate of ccinr against each codec, {w0:g}–{w1:g} dB\n")
        lines.append(
            f"ccinr: {s['size']} px regions, {s['ccinr_steps']} steps, qualities {', '.join(s['qualities'])}; "
            "network bits counted in the file bytes at this region size. Same BD-rate as above, with the "
            f"PSNR integral restricted to the part of the two curves' overlap inside {w0:g}–{w1:g} dB; "
            "n/a: no overlap there, or a curve has < 2 points.\n"
        )
        lines.append("| image | " + " | ".join(codecs) + " |")
        lines.append("|---|" + "---:|" * len(codecs))
        for im in result["images"]:
            lines.append(
                f"| {im['image']} | " + " | ".join(_pct(im["bd_rate_ccinr"][c]) for c in codecs) + " |"
            )
        lines.append("| **mean** | " + " | ".join(_pct(result["bd_rate_ccinr"][c]) for c in codecs) + " |")
        lines.append("")
    target = s["bpp_at_psnr_db"]
    curves = list(next(iter(result["bpp_at_37_5"].values()), {}))
    if curves:
        lines.append(f"## Bits per pixel at {target:g} dB\n")
        lines.append(
            f"Read on each curve's rate-distortion front (PCHIP of log-rate on PSNR); – when {target:g} dB is "
            f"outside the curve's PSNR range. {s['size']} px regions; neural-codec bpp counts the whole file.\n"
        )
        lines += md_table(
            ("image", *curves),
            "l" + "r" * len(curves),
            ((im, *(num(v[c]) for c in curves)) for im, v in result["bpp_at_37_5"].items()),
        )
        lines.append("")
    if png_name:
        lines.append(f"![PSNR against bpp]({png_name})\n")
    for im in result["images"]:
        rg = im["region"]
        lines.append(f"## {im['image']}\n")
        lines.append(
            f"Region {rg['width']}x{rg['height']} at ({rg['x']}, {rg['y']}) of {rg['image_width']}x"
            f"{rg['image_height']} ({rg['how']}); {im['seconds']:.0f} s for this image."
            + grid_note(im)
            + (" cinr fits: " if im["cinr_fits"] else "")
            + "; ".join(
                f"{f['preset']} {f['steps']} steps in {f['seconds']:.1f} s on {f['device']}, "
                f"{f['fit_psnr']:.2f} dB before storage, {f['n_params']:,} parameters"
                for f in im["cinr_fits"]
            )
            + ("." if im["cinr_fits"] else "")
            + "\n"
        )
        st = im["source_tiles"]
        q = f", Q={st['quality']}" if st.get("quality") is not None else ""
        if st["exact"]:
            lines.append(
                f"Source's own storage: {st['tiles']} level-0 tiles of {st['tile_size'][0]}x{st['tile_size'][1]} "
                f"({st['compression']}{q}) cover the region: {st['bytes']:,} B ({st['how']}), "
                f"{st['bpp_region']:.3f} bpp over the region's pixels, {st['bpp_covered']:.3f} bpp over the "
                f"{st['covered_pixels']:,} pixels the tiles cover.\n"
            )
        else:
            lines.append(
                f"Source's own storage: {st['bytes']:,} B, {st['bpp_region']:.3f} bpp ({st['how']}).\n"
            )
        if im["pyramid"]:
            lines.append(
                f"JPEG-tiled pyramid of the region (libvips `tiffsave`, {PYRAMID_TILE} px tiles, halved "
                "until a level fits one tile; level 0 PSNR/SSIM against the region):\n"
            )
            lines += md_table(
                PYRAMID_HEAD,
                "rlrrrrrrrr",
                (
                    (
                        p["quality"],
                        ", ".join(f"{x['width']}x{x['height']}" for x in p["levels"]),
                        f"{p['level0_bytes']:,}",
                        f"{p['level0_bpp']:.3f}",
                        f"{p['lower_levels_bytes']:,}",
                        f"{p['lower_levels_bpp']:.3f}",
                        f"{p['file_bytes']:,}",
                        f"{p['file_bpp']:.3f}",
                        num(p["level0_psnr"], ".2f", "inf"),
                        f"{p['level0_ssim']:.4f}",
                    )
                    for p in im["pyramid"]
                ),
            )
            lines.append("")
        lines.append(
            "Rate needed for cinr's and ccinr's PSNR (PCHIP of log-rate on PSNR; – outside the codec's range):\n"
        )
        lines.append("| setting | bpp | PSNR | " + " | ".join(f"{c} bpp" for c in codecs) + " |")
        lines.append("|---|---:|---:|" + "---:|" * len(codecs))
        for e in im["equal_psnr"]:
            lines.append(
                f"| {e.get('codec', 'cinr')} {e['setting']} | {e['bpp']:.3f} | {e['psnr']:.2f} | "
                + " | ".join(num(e["codecs"][c]) for c in codecs)
                + " |"
            )
        lines.append("")
        lines += md_table(
            ("codec", "setting", "bytes", "bpp", "PSNR (dB)", "SSIM", "encode s"),
            "llrrrrr",
            (
                (
                    r["codec"],
                    r["setting"],
                    f"{r['bytes']:,}",
                    f"{r['bpp']:.3f}",
                    num(r["psnr"], ".2f", "lossless"),
                    f"{r['ssim']:.4f}",
                    f"{r['seconds']:.2f}",
                )
                for r in im["rows"]
            ),
        )
        cov = [
            f"{c} (bpp {v['bpp'][0]:.2f}–{v['bpp'][1]:.2f})"
            for c, v in im["coverage"].items()
            if v and not v["covers_cinr_bpp"]
        ]
        if cov:
            lines.append(
                "\nNot covering the cinr/ccinr bpp range even with the extra settings: "
                + ", ".join(cov)
                + "."
            )
        lines.append("")
    lines.append(f"Total wall time: {result['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path, extra: dict[str, str]) -> bool:
    """PSNR against bpp (log x), one panel per image, one curve per codec, cinr points marked."""
    plt = pyplot()
    if plt is None:
        return False
    images = result["images"]
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(max(6.5, 5.2 * n), 5.6), dpi=120, squeeze=False)
    colours = dict(zip(CODECS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for ax, im in zip(axes[0], images):
        for c in result["codecs"]:
            pts = [r for r in im["rows"] if r["codec"] == c and r["psnr"] is not None]
            if pts:
                ax.plot(
                    [r["bpp"] for r in pts],
                    [r["psnr"] for r in pts],
                    marker=".",
                    ms=4,
                    lw=1,
                    color=colours.get(c),
                    label=c,
                )
        cinr = [r for r in im["rows"] if r["codec"] == "cinr" and r["psnr"] is not None]
        fr, fp = rd_front([r["bpp"] for r in cinr], [r["psnr"] for r in cinr])
        if len(fr):
            ax.plot(fr, fp, color="black", lw=2, label="cinr (front)")
        for preset, marker in (("fast", "^"), ("default", "*")):
            pts = [r for r in cinr if r["preset"] == preset]
            if pts:
                ax.scatter(
                    [r["bpp"] for r in pts],
                    [r["psnr"] for r in pts],
                    marker=marker,
                    s=70,
                    color="black",
                    zorder=5,
                    label=f"cinr {preset}",
                )
                for r in pts:
                    ax.annotate(
                        r["quant"],
                        (r["bpp"], r["psnr"]),
                        fontsize=6,
                        xytext=(3, -8),
                        textcoords="offset points",
                    )
        cc = sorted(
            (r for r in im["rows"] if r["codec"] == "ccinr" and r["psnr"] is not None), key=lambda r: r["bpp"]
        )
        if cc:
            ax.plot(
                [r["bpp"] for r in cc],
                [r["psnr"] for r in cc],
                marker="D",
                ms=5,
                lw=2,
                color="tab:brown",
                zorder=5,
                label="ccinr",
            )
            for r in cc:
                ax.annotate(
                    r["setting"], (r["bpp"], r["psnr"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
        for p in im["pyramid"]:
            if p["level0_psnr"] is not None:
                ax.scatter([p["file_bpp"]], [p["level0_psnr"]], marker="x", color="grey", zorder=4)
                ax.annotate(
                    f"JPEG pyramid Q{p['quality']}",
                    (p["file_bpp"], p["level0_psnr"]),
                    fontsize=6,
                    color="grey",
                )
        rg = im["region"]
        ax.set_title(f"{im['image']}\n{rg['width']}x{rg['height']} at ({rg['x']}, {rg['y']})", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR (dB, RGB)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    text = header("cinr rate-distortion: PSNR against bits per pixel", extra).splitlines()
    info = " | ".join(ln[2:] for ln in text if ln.startswith("- "))
    wrapped = textwrap.wrap(info, width=int(fig.get_figwidth() * 18))
    top = 1 - 0.022 * (len(wrapped) + 1)
    fig.text(
        0.01, 0.995, "\n".join([text[0].lstrip("# "), *wrapped]), fontsize=6, va="top", family="monospace"
    )
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, metadata={"Description": "\n".join(text)})
    plt.close(fig)
    return True
