"""gkabench's long-context tasks ship as lm-eval YAML in gkabench/tasks/lm_eval/ and are found by name."""

from __future__ import annotations

import yaml

from gkabench.lm_eval_bridge import TASKS_DIR, task_manager

NAMES = [
    "gkabench_rag_nq", "gkabench_rag_triviaqa", "gkabench_rag_popqa", "gkabench_rag_hotpotqa",
    "gkabench_longqa_squad", "gkabench_longqa_hotpotqa", "gkabench_niah_single", "gkabench_niah_multikey",
]  # fmt: skip


def test_shipped_long_context_tasks_are_indexed():
    tm = task_manager(tasks=NAMES)
    for name in NAMES:
        assert name in tm.task_index, name


def test_shipped_task_metadata_names_a_generator_and_lengths():
    from gkabench.tasks.longctx import parse_tasks

    for name in NAMES:
        text = (TASKS_DIR / f"{name}.yaml").read_text()
        # lm-eval's !function tags are not plain YAML; read the metadata block only
        meta = yaml.safe_load(text[text.index("metadata:"):])["metadata"]
        assert parse_tasks(meta["gkabench_task"])
        assert meta["max_seq_lengths"] == [4096, 8192, 16384, 32768, 65536, 131072]
        metrics = [ln.split('"')[1] for ln in text.splitlines() if ln.strip().startswith("- metric:")]
        assert metrics == [str(n) for n in meta["max_seq_lengths"]]
