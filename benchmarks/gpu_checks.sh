#!/usr/bin/env bash
# Device checks, run on a lent GPU machine from the repository root (see the issue notes):
#   CUDA tests, one 1024^2 block of real tissue encoded per hash-grid preset on the GPU and once
#   at the defaults (ccinr; decoded on the CPU, as every file is), GPU decode timings, and the
#   hash-grid speed on CUDA.
# Usage: DATA=folder-with-prostate1024.png OUT=results-folder benchmarks/gpu_checks.sh
set -uo pipefail
DATA=${DATA:-.devdata}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/versions.txt"
python3 -m pytest -q -p no:cacheprovider tests/core/test_gpu.py tests/core/test_hashgrid.py 2>&1 | tail -5 | tee "$OUT/pytest_gpu.txt"
for preset in fast default high; do
  /usr/bin/time -v python3 -m cinr_codec encode "$DATA/prostate1024.png" -o "/tmp/p_$preset.cinr" \
    --preset "$preset" --device cuda --block-size 1024 --json --quiet \
    > "$OUT/encode_$preset.json" 2> "$OUT/encode_$preset.time"
  cat "$OUT/encode_$preset.json"; echo
done
# The default encode (ccinr, aimed at 37 dB, 2400 steps a block on a GPU): four 512^2 blocks.
/usr/bin/time -v python3 -m cinr_codec encode "$DATA/prostate1024.png" -o /tmp/p_ccinr.cinr --json --quiet \
  > "$OUT/encode_ccinr_default.json" 2> "$OUT/encode_ccinr_default.time"
cat "$OUT/encode_ccinr_default.json"; echo
python3 - <<'PY' 2>&1 | tee "$OUT/decode_gpu.txt"
import time, statistics, torch
from cinr_codec.decode import SlideDecoder
for preset in ("fast", "default", "high"):
    for dev in ("cuda", "cpu"):
        d = SlideDecoder(f"/tmp/p_{preset}.cinr", device=dev)
        d.read(0, 0, 64, 64)  # load the model, warm the device
        for size in (256, 512):
            times = []
            for i in range(5):
                d.clear_cache(models=False)  # decoded tiles only: the model stays loaded
                if dev == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                d.read(0, 0, size, size)
                if dev == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t) * 1000)
            print(f"{preset:8s} {dev:5s} {size}x{size} scale 1 cold tiles: median {statistics.median(times):.1f} ms")
        d.close()
PY
python3 -m benchmarks.hashgrid_speed --device cuda --repeat 5 2>&1 | tee "$OUT/hashgrid_speed_cuda.txt"
cp benchmarks/results/hashgrid_speed_cuda.md "$OUT/" 2>/dev/null || true
# The lent machine's 16 CPU cores run the 10^5-mutant fuzz of issue 14 in about 10-15 minutes
# (2-core CPU: about 3-10 mutants/s per core). Only with FUZZ=1: it takes most of a session's device time.
if [ "${FUZZ:-0}" = 1 ]; then
  python3 -m benchmarks.fuzz --jobs "$(nproc)" --mutants 100000 --memory-gb 3 --timeout 20 --out "$OUT/fuzz.md" 2>&1 | grep -v -i warn | tail -3
fi
