#!/usr/bin/env bash
# All GPU measurements in one run (sized to fit a few minutes on one GPU; not yet run): cached-sampling efficiency
# of DiT-XL/2 with the released NFE-20 router (fp32 and bf16), router-training iterations/s (batch 64,
# the official recipe) and generation throughput.
# Usage: [DIT_REPO=... L2C_REPO=...] bash benchmarks/gpu_check.sh [OUT_DIR] [ROUTERS_DIR]   (writes OUT_DIR/*.json and summary.md)
set -euo pipefail
OUT=${1:-${OUT:-results/gpu}}
ROUTERS=${2:-../shared/reference/official-routers}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
for dt in fp32 bf16; do
  l2c bench --model DiT-XL/2 --image-size 256 --nfe 20 --router "$ROUTERS/DDIM20_router.pt" --theta 0.1 \
    --batch 8 --cfg-scale 1.5 --device cuda --dtype "$dt" --repeats 5 --json "$OUT/bench_l2c20_$dt.json" | tee "$OUT/bench_l2c20_$dt.txt"
done
l2c bench-router --model DiT-XL/2 --image-size 256 --num-classes 1000 --nfe 20 --batch 64 --iters 20 --warmup 3 \
  --device cuda --json "$OUT/bench_router_dit_xl2.json" | tee "$OUT/bench_router_dit_xl2.txt"
# against the authors' code (needs their checkouts and timm: see benchmarks/vs_official.py); skipped when absent
if [[ -n "${DIT_REPO:-}" && -n "${L2C_REPO:-}" ]]; then
  python benchmarks/vs_official.py --dit-repo "$DIT_REPO" --l2c-repo "$L2C_REPO" --device cuda --batch 8 --repeats 5 \
    --xl-latent 32 --cases xl --compile --json "$OUT/vs_official_cuda.json" | tee "$OUT/vs_official_cuda.txt"
fi
python benchmarks/throughput.py --model DiT-XL/2 --image-size 256 --nfe 20 --batches 32 128 256 --dtype bf16 \
  --device cuda --peak-tflops 989 --json "$OUT/throughput_bf16.json" | tee "$OUT/throughput_bf16.txt"
{ echo "# GPU check"; echo; cat "$OUT/device.txt"; for f in "$OUT"/*.txt; do echo; echo "## $(basename "$f")"; echo '```'; cat "$f"; echo '```'; done; } > "$OUT/summary.md"
