"""Pack Triton's compile cache so the next, fresh device machine starts warm (run by device_epilogue.sh).

Why: on the H200 a first call spends minutes compiling (fla autotunes every config of every kernel; GKA's fp32
kernels take ~200 s), and a fresh machine starts with an empty cache. The device tool returns at most 8 files
of 16 MiB and carries at most 64 MiB back, while a full cache after one sweep is ~450 MB (100 MB compressed).

What is kept: each kernel's metadata JSON and its cubin (all a cache hit loads: the group file is rewritten to
list just those two, since Triton treats a group with a missing child as a miss), and fla's autotune results
(`*.autotune.json`: with them a new machine compiles only the chosen config instead of benchmarking them all).
The IR text (ttir, ttgir, llir, ptx, source: ~80% of the bytes) is dropped.

    python3 scripts/pack_triton_cache.py CACHE_DIR OUT_DIR [--max-parts 4] [--part-mb 15]
    python3 scripts/pack_triton_cache.py --fix-groups CACHE_DIR   # after restoring or copying a cache

Triton's group files list their children by absolute path, so a cache restored or copied to another directory
(device_multi.sh gives each job its own copy) misses on every kernel whose group points at the old place:
`--fix-groups` rewrites those paths to the directory the group file is in (device_prelude.sh and
device_multi.sh run it), and packing looks for the children there too.

Writes OUT_DIR/tcache-part-00, -01, ... (a split tar.gz; `cat tcache-part-* | tar xzf - -C CACHE_DIR` restores).
If the pruned cache is still too big, the autotune results are kept, then the kernels a warm start loads (those
not autotuned and the winning configs of the autotuned ones), then the other configs, newest first, while they fit.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import time
from pathlib import Path

KEEP_SUFFIXES = (".json", ".cubin")


def best_configs(cache: Path) -> dict[str, set[tuple[int, int]]]:
    """Kernel name -> the (num_warps, num_stages) of the fastest config in each of its autotune results.

    A cache hit for an autotuned kernel whose result is on disk compiles (or loads) only that config, so these
    binaries are worth carrying before the others the tuning compiled. The binary's metadata names its warps and
    stages but not its tile constexprs, so this keeps every tile size of a winning (warps, stages): a superset."""
    best: dict[str, set[tuple[int, int]]] = {}
    for f in cache.glob("*/*.autotune.json"):
        try:
            timed = json.loads(f.read_text())["configs_timings"]
        except (OSError, ValueError, KeyError):
            continue

        def ms(entry) -> float:
            t = entry[1]
            t = t[0] if isinstance(t, list) else t
            return float(t) if t is not None else float("inf")

        if timed:
            cfg = min(timed, key=ms)[0]
            best.setdefault(f.name[: -len(".autotune.json")], set()).add((cfg.get("num_warps"), cfg.get("num_stages")))
    return best


def kernel_groups(cache: Path) -> list[tuple[float, Path, dict]]:
    """(mtime, group file, child paths kept) for every compiled kernel in the cache: first the kernels a warm
    start loads (not autotuned, or an autotuned kernel's winning config), then the other configs; newest first
    within each."""
    best = best_configs(cache)
    groups = []
    for grp in cache.glob("*/__grp__*"):
        try:
            children = json.loads(grp.read_text())["child_paths"]
        except (OSError, ValueError, KeyError):
            continue
        # the children sit beside the group file; its absolute paths may name another (copied-from) directory
        kept = {name: str(grp.parent / Path(path).name) for name, path in children.items() if name.endswith(KEEP_SUFFIXES)}
        if not any(name.endswith(".cubin") for name in kept):
            continue
        # age from the binaries: a group file restored from a pack has no meaningful mtime of its own
        mtime = max((Path(p).stat().st_mtime for p in kept.values() if Path(p).exists()), default=0.0)
        groups.append((0 if wanted(best, kept) else 1, mtime, grp, kept))
    return [(mtime, grp, kept) for _, mtime, grp, kept in sorted(groups, key=lambda g: (g[0], -g[1]))]


def wanted(best: dict[str, set[tuple[int, int]]], kept: dict) -> bool:
    """Whether a compiled kernel is one a warm start loads (see :func:`best_configs`)."""
    meta = next((Path(p) for name, p in kept.items() if name.endswith(".json")), None)
    try:
        m = json.loads(meta.read_text()) if meta is not None else {}
    except (OSError, ValueError):
        return True
    name = m.get("name")
    return name not in best or (m.get("num_warps"), m.get("num_stages")) in best[name]


def add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes) -> None:
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def pack(cache: Path, out: Path, max_bytes: int, part_bytes: int) -> tuple[int, int, int]:
    """Write the parts; returns (kernels packed, kernels skipped, bytes written)."""
    buf = io.BytesIO()
    packed = skipped = 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in cache.glob("*/*.autotune.json"):  # small, and the biggest time saver
            tar.add(f, arcname=str(f.relative_to(cache)))
        for _, grp, kept in kernel_groups(cache):
            if buf.tell() > max_bytes * 0.95:  # compressed size so far (gzip flushes as it goes)
                skipped += 1
                continue
            files = [Path(p) for p in kept.values()]
            if not all(f.exists() for f in files):
                skipped += 1
                continue
            for f in files:
                tar.add(f, arcname=str(f.relative_to(cache)) if f.is_relative_to(cache) else f"{grp.parent.name}/{f.name}")
            add_bytes(tar, str(grp.relative_to(cache)), json.dumps({"child_paths": kept}).encode())
            packed += 1
    data = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), part_bytes):
        (out / f"tcache-part-{i // part_bytes:02d}").write_bytes(data[i : i + part_bytes])
    return packed, skipped, len(data)


def fix_groups(cache: Path) -> int:
    """Point every group file's children at the group's own directory. Returns the number of groups rewritten."""
    fixed = 0
    for grp in cache.glob("*/__grp__*"):
        try:
            data = json.loads(grp.read_text())
            children = data["child_paths"]
        except (OSError, ValueError, KeyError):
            continue
        local = {name: str(grp.parent.resolve() / Path(path).name) for name, path in children.items()}
        if local != children:
            data["child_paths"] = local
            grp.write_text(json.dumps(data))
            fixed += 1
    return fixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cache_dir", type=Path)
    ap.add_argument("out_dir", type=Path, nargs="?")
    ap.add_argument("--fix-groups", action="store_true", help="only rewrite group files' child paths in CACHE_DIR")
    ap.add_argument("--max-parts", type=int, default=4)
    ap.add_argument("--part-mb", type=int, default=15)
    a = ap.parse_args()
    if a.fix_groups:
        if a.cache_dir.is_dir():
            print(f"triton cache: {fix_groups(a.cache_dir)} group files pointed at {a.cache_dir}")
        return
    if a.out_dir is None:
        ap.error("OUT_DIR is required unless --fix-groups")
    if not a.cache_dir.is_dir():
        print(f"triton cache: {a.cache_dir} does not exist; nothing packed")
        return
    part = a.part_mb * 1024 * 1024
    packed, skipped, size = pack(a.cache_dir.resolve(), a.out_dir, a.max_parts * part, part)
    print(
        f"triton cache: {packed} kernels (cubin + metadata) and the autotune results packed, {size / 2**20:.1f} MiB"
        + (f"; {skipped} kernels left out (over {a.max_parts} parts; losing configs of autotuned kernels first, then the oldest)" if skipped else "")
        + f"; restore with: cat {a.out_dir}/tcache-part-* | tar xzf - -C {os.environ.get('TRITON_CACHE_DIR', 'CACHE')}"
    )


if __name__ == "__main__":
    main()
