"""Atomic result writes: text, bytes and figures land whole or not at all."""

from __future__ import annotations

import pytest


def test_write_atomic_text_bytes_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gkabench.io import save_figure_atomic, write_atomic, write_text_atomic

    assert write_text_atomic(tmp_path / "a" / "t.md", "x\n").read_text() == "x\n"  # folders are made
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure_atomic(fig, tmp_path / "f.png", dpi=50)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not plt.get_fignums()  # written and closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.bin", "f.png"]  # no temporary files left


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    from gkabench.io import write_atomic

    path = write_atomic(tmp_path / "r.txt", "old")
    with pytest.raises(TypeError):
        write_atomic(path, 123)  # neither str nor bytes: fails before the rename
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.txt"]
