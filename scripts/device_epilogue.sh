# Sourced at the end of a device-machine script: packs Triton's compile cache into $OUT as tar.gz parts of
# 15 MB (the device tool returns at most 8 files of 16 MiB). Back here:
#   mkdir -p .triton_cache && cp <files_at>/tcache-part-* .triton_cache/   (git-ignored; carry it next call)
# Skipped when the cache packs to more than MAX_PARTS parts (the carried tree is limited to 64 MiB).
MAX_PARTS=${MAX_PARTS:-4}
if [ -d "${TRITON_CACHE_DIR:-/tmp/triton_cache}" ]; then
  tar czf /tmp/tcache.tgz -C "${TRITON_CACHE_DIR:-/tmp/triton_cache}" .
  size=$(stat -c %s /tmp/tcache.tgz)
  if [ "$size" -le $((MAX_PARTS * 15 * 1024 * 1024)) ]; then
    split -b 15m -d /tmp/tcache.tgz "$OUT/tcache-part-" && echo "triton cache: $((size / 1024 / 1024)) MiB packed into $OUT"
  else
    echo "triton cache: $((size / 1024 / 1024)) MiB is over $MAX_PARTS parts; not packed"
  fi
fi
