"""Speed harness: timing, memory, FLOP counts; the demo comparison.

``timing`` (do_bench / perf_counter medians, allocator peak), ``flops`` (GKA's analytic count), ``config``
(options, presets, per-device defaults, parsers), ``ops`` (the core op of each mixer with the anchor inputs),
``cases`` (one measurable cell at op or layer level), ``sweep`` (the cell loop: JSONL rows, failure cells, resume,
time budget), ``report`` (CSV / markdown / plot, written atomically), ``speed`` (what ``gkabench speed`` runs),
``demo`` (``gkabench demo``).
"""
