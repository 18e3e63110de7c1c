"""How much a JPEG-sourced region's position on the source's 8x8 grid helps the block codecs.

    python -m benchmarks.jpeg_grid [--json]

Re-encoding a JPEG with a block codec whose blocks fall on the source's own 8x8 grid re-hits
the source's quantisation and costs unusually few bits; a neural codec has no such grid. For
each region (the rate-distortion benchmark's quick 256 px region of the prostate image, the same
moved onto the grid, and the 1024 px confirmation region with the same moved off it) this
reports the bits per pixel JPEG, JPEG XL and AVIF need for 37.5 dB (the sweeps and the PCHIP
reading of ``benchmarks.rd``).
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import RESULTS, SHARED, header, md_table, publish

IMAGE = SHARED / "he-prostate-2500.jpeg"
#: (x, y, side): rd --quick's region (x 46: 2 px off the grid), on the grid, and rd's 1024 px
#: confirmation region (on the grid) moved 4 px off it.
REGIONS = ((46, 1272, 256), (48, 1272, 256), (40, 1272, 256), (1216, 1008, 1024), (1220, 1012, 1024))
SETTINGS: dict[str, Any] = {
    "jpeg": range(20, 99, 2),
    "jpegxl": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.3, 2.6, 3.0, 3.5, 4.0),
    "avif": range(30, 100, 2),
}
PSNR = 37.5


def main(argv: list[str] | None = None) -> None:
    from benchmarks.bdrate import rate_at
    from benchmarks.rd_codecs import make_codecs, measure_codec
    from cinr_codec.encode.source import SlideSource

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    codecs, _ = make_codecs()
    rows = []
    with SlideSource(IMAGE) as src:
        for x, y, side in REGIONS:
            img = src.read(x, y, side, side)
            row: dict[str, Any] = {"x": x, "y": y, "side": side, "on_grid": x % 8 == 0 and y % 8 == 0}
            for name, settings in SETTINGS.items():
                pts = [measure_codec(codecs[name], img, s) for s in settings]
                row[name] = rate_at([p["bpp"] for p in pts], [p["psnr"] for p in pts], PSNR)
            rows.append(row)
    lines = [
        header("JPEG-sourced regions on and off the source's 8x8 grid"),
        f"Image: {IMAGE.name} (a JPEG). Bits per pixel each codec needs for {PSNR} dB (PSNR on 8-bit RGB), "
        "read on its sweep's rate-distortion front as in `benchmarks.rd`.",
        "",
        *md_table(
            ["region (x, y, side)", "on the 8x8 grid", "JPEG", "JPEG XL", "AVIF"],
            "llrrr",
            [
                (
                    f"({r['x']}, {r['y']}, {r['side']})",
                    "yes" if r["on_grid"] else "no",
                    *(f"{r[c]:.3f}" if r[c] is not None else "–" for c in SETTINGS),
                )
                for r in rows
            ],
        ),
        "",
    ]
    publish(RESULTS / "jpeg_grid.md", "\n".join(lines), {"rows": rows}, args.json)


if __name__ == "__main__":
    main()
