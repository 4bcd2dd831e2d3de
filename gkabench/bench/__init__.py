"""Speed harness: timing, memory, FLOP counts; the demo comparison."""
