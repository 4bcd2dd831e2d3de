# Sourced at the start of every device-machine script (bash; from the repo root).
# - installs the carried fla wheels (.whl/, see the device README) into /tmp/site;
# - points Triton's compile cache at $TRITON_CACHE_DIR (default /tmp/triton_cache), seeded from a carried
#   .triton_cache/ (tar.gz parts made by device_epilogue.sh on an earlier machine). First calls of fla's autotuned
#   ops and of GKA's fp32 kernels spend minutes compiling (seen on the H200: >150 s before fla's first GDN
#   backward, 198 s for GKA's fp32 kernels); a warm cache turns that into seconds on a fresh machine of the same
#   kind (same GPU, driver, Triton).
# Under scripts/device_multi.sh (several scripts at once, one GPU each) the wheels are installed once by the
# orchestrator (GKABENCH_PRELUDE_DONE=1) and each script gets its own, already seeded cache directory.
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-160}
OUT=${OUT:-/tmp/gkabench_out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
mkdir -p "$TRITON_CACHE_DIR"
if [ "${GKABENCH_PRELUDE_DONE:-0}" != "1" ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  fi
  if ls .triton_cache/tcache-part-* >/dev/null 2>&1 && [ -z "$(ls -A "$TRITON_CACHE_DIR")" ]; then
    cat .triton_cache/tcache-part-* | tar xzf - -C "$TRITON_CACHE_DIR"; echo "triton cache: seeded with $(find "$TRITON_CACHE_DIR" -type f | wc -l) files"
    python3 scripts/pack_triton_cache.py --fix-groups "$TRITON_CACHE_DIR"
  elif [ -z "$(ls -A "$TRITON_CACHE_DIR")" ]; then
    # .triton_cache/ is git-ignored: a new checkout has none (session 16: ~2 minutes of call 1 went to compiling)
    echo "triton cache: none carried (.triton_cache/tcache-part-*): every kernel compiles here first"
  fi
fi
