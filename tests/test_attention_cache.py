"""Attention's KV cache without padding (no mask kept, no host sync: capturable decode) against the full
forward: chunked prefill with an offset causal mask, single-token steps, and a padded cache continued unpadded."""

from __future__ import annotations

import torch

from gkabench.layers import build_mixer


def _layer():
    torch.manual_seed(0)
    return build_mixer("attention", 32, num_heads=2, head_dim=16).double().eval()


def test_unpadded_cache_chunks_and_steps_equal_full_forward():
    m = _layer()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    full, _ = m(x)
    y1, c = m(x[:, :4], use_cache=True)
    assert c.get("mask") is None  # nothing padded: no mask kept
    y2, c = m(x[:, 4:9], cache=c, use_cache=True)  # a chunk after cached keys (offset causal mask)
    ys = [y1, y2]
    for t in range(9, 11):
        y, c = m(x[:, t : t + 1], cache=c, use_cache=True)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), full, rtol=1e-10, atol=1e-10)
    assert c.seen_tokens == 11 and c["k"].shape[1] == 11


def test_padded_cache_continued_without_mask():
    m = _layer()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0  # left padding in sequence 1
    y_pad, c = m(x[:, :5], attention_mask=mask, use_cache=True)
    assert c.get("mask") is not None
    y_next, _ = m(x[:, 5:6], cache=c, use_cache=True)  # no mask given now: the cache's mask still applies
    # sequence 1 alone, without its padding, gives the same next output
    ref_full, _ = m(x[1:2, 2:6])
    torch.testing.assert_close(y_next[1], ref_full[0, -1:], rtol=1e-10, atol=1e-10)
