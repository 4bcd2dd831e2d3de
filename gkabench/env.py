"""What this machine is: device, versions, git sha and a hash of the code. Every result row carries this header."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """Short sha of the checkout (``-dirty`` with uncommitted changes to tracked files). ``GKABENCH_GIT_SHA`` overrides
    it for a copied tree whose ``.git`` is stale (the device machine's), as ``GKABENCH_GIT_SHA=<sha> gkabench ...``."""
    if os.environ.get("GKABENCH_GIT_SHA"):
        return os.environ["GKABENCH_GIT_SHA"]
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """12 hex digits of SHA-1 over the package's .py files (relative path and bytes, in path order).

    Unlike :func:`git_sha` it depends only on the code that ran: the device machine runs a copy of the working
    tree over an older ``.git``, so its git sha can name a commit other than the one whose code ran (session 6).
    ``python -c "from gkabench.env import code_hash; print(code_hash())"`` at a checkout gives that commit's value.
    """
    import hashlib

    pkg = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for f in sorted(pkg.rglob("*.py")):
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def environment(device: torch.device | str | None = None) -> dict:
    """The header every result file and row carries."""
    device = torch.device(device) if device is not None else default_device()
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version(),
        "fla": package_version("fla-core") or package_version("flash-linear-attention"),
        "transformers": package_version("transformers"),
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "code_hash": code_hash(),
        "command": " ".join(["gkabench", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("gkabench") else " ".join(sys.argv),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        # which physical GPU (on a machine of several, runs on different GPUs do not share one)
        info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        info["device_index"] = device.index if device.index is not None else torch.cuda.current_device()
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            )
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info
