"""Bytes and time of a block's mips stored as JPEG (the ladder) or AVIF (libavif speeds), at equal PSNR.

    python -m benchmarks.mip_codecs [--side 1024] [--targets 35.1,37.6] [--speeds 6,8,9,9+8] [--json]

For a centred ``--side`` crop of each of the three images in ``../shared/data``, the
box-filtered mips at downsamples 2 and 4 are stored the way ``encode.mips.encode_mip`` does (the
smallest file whose PSNR against the exact box means reaches the target): JPEG only (4:2:0 or
4:4:4 over the quality ladder), then AVIF 4:4:4 over qualities 0-100 at each libavif speed
(``9+8``: searched at speed 9, then re-encoded at speed 8 from the quality found, as the encoder
does).
Reported: bytes per image and target, totals, and the seconds of each search.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, SHARED_IMAGES, csv_list, header, md_table, publish

DOWNSAMPLES = (2, 4)


def main(argv: list[str] | None = None) -> None:
    from cinr_codec.coding import images
    from cinr_codec.core.resample import box_downsample
    from cinr_codec.encode import mips
    from cinr_codec.encode.source import read_crop

    ap = argparse.ArgumentParser(prog="python -m benchmarks.mip_codecs", description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--targets", default="35.1,37.6", help="PSNR targets (dB), comma-separated")
    ap.add_argument(
        "--speeds",
        default="6,8,9,9+8",
        help="libavif speeds (S or S+R: search at S, refine at R), comma-separated",
    )
    ap.add_argument("--out", default="mip_codecs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not images.avif_available():
        raise SystemExit("this Pillow has no AVIF (Pillow >= 11.3 wheels do)")
    targets = [float(t) for t in csv_list(args.targets)]
    speeds = csv_list(args.speeds)
    sources = [p for p in SHARED_IMAGES if p.exists()]
    rows: list[tuple[object, ...]] = []
    payload: list[dict[str, Any]] = []
    totals: dict[str, list[float]] = {}  # codec -> [bytes, seconds]
    default_speed = images.AVIF_SPEED
    try:
        for path in sources:
            img = read_crop(path, args.side)
            for d in DOWNSAMPLES:
                exact = box_downsample(img, d)
                for target in targets:
                    r: dict[str, Any] = {"image": path.name, "downsample": d, "target_db": target}
                    t = time.perf_counter()
                    data, got, _ = mips.encode_mip(exact, target, avif=False)
                    r["jpeg"] = {"bytes": len(data), "psnr": got, "seconds": time.perf_counter() - t}
                    for s in speeds:
                        search, _, refine = s.partition("+")
                        images.AVIF_SPEED = int(search)
                        t = time.perf_counter()
                        found = mips._smallest_avif(
                            mips.to_uint8(exact),
                            exact.astype(np.float64),
                            target,
                            refine_speed=int(refine or 0),
                        )
                        sec = time.perf_counter() - t
                        r[f"avif{s}"] = (
                            {"bytes": len(found[0]), "psnr": found[1], "quality": found[2], "seconds": sec}
                            if found
                            else None
                        )
                    payload.append(r)
                    cells: list[object] = [path.name, d, f"{target:g}", f"{r['jpeg']['bytes']:,}"]
                    for key in ["jpeg"] + [f"avif{s}" for s in speeds]:
                        v = r[key] or r["jpeg"]  # AVIF that cannot reach the target: JPEG is stored
                        tot = totals.setdefault(key, [0.0, 0.0])
                        tot[0] += v["bytes"]
                        tot[1] += v["seconds"] if r[key] else 0.0
                        if key != "jpeg":
                            cells.append(
                                f"{r[key]['bytes']:,} ({r[key]['bytes'] / r['jpeg']['bytes'] - 1:+.0%})"
                                if r[key]
                                else "–"
                            )
                    rows.append(tuple(cells))
                    print(" ".join(str(c) for c in cells), flush=True)
    finally:
        images.AVIF_SPEED = default_speed
    jpeg_total = totals["jpeg"][0]
    summary = [
        (
            key,
            f"{int(b):,}",
            f"{b / jpeg_total - 1:+.1%}",
            f"{sec / len(payload):.2f}",
        )
        for key, (b, sec) in totals.items()
    ]
    text = "\n".join(
        [
            header("Mips as JPEG or AVIF at equal PSNR"),
            f"Centred {args.side} px crops of {', '.join(p.name for p in sources)}; mips at downsamples "
            f"{', '.join(map(str, DOWNSAMPLES))}; each stored as the smallest file whose PSNR against the "
            "exact box means reaches the target (`encode.mips`: JPEG 4:2:0 or 4:4:4 over its ladder; "
            "AVIF 4:4:4, qualities 0-100 by binary search). `encode_mip` keeps the smaller of JPEG and "
            f"AVIF at speed {default_speed}.",
            "",
            *md_table(
                ["image", "d", "target dB", "JPEG bytes", *(f"AVIF speed {s} bytes" for s in speeds)],
                "lrrr" + "r" * len(speeds),
                rows,
            ),
            "",
            "Totals (AVIF that cannot reach a target counted as the JPEG stored instead):",
            "",
            *md_table(["codec", "bytes", "against JPEG", "seconds per mip search"], "lrrr", summary),
        ]
    )
    publish(RESULTS / f"{args.out}.md", text, payload, args.json, data={"rows": payload})


if __name__ == "__main__":
    main()
