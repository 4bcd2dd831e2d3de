# Sourced at the end of a device-machine script: packs Triton's compile cache into $OUT as tar.gz parts of
# 15 MB (kernel binaries, metadata and fla's autotune results; see scripts/pack_triton_cache.py). Back here:
#   mkdir -p .triton_cache && rm -f .triton_cache/tcache-part-* && cp <files_at>/tcache-part-* .triton_cache/
# (git-ignored) and carry it next call: a fresh machine then skips most compilation and all of fla's autotuning.
# NO_PACK=1 (set by scripts/device_multi.sh for the scripts it runs) leaves the packing to the caller.
if [ "${NO_PACK:-0}" != "1" ]; then
  python3 scripts/pack_triton_cache.py "${TRITON_CACHE_DIR:-/tmp/triton_cache}" "$OUT" --max-parts "${MAX_PARTS:-3}"
fi
