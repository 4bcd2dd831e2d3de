"""The environment header every result row carries."""

from __future__ import annotations


def test_git_sha_override_names_the_commit_of_a_copied_tree(monkeypatch):
    """The device machine runs a copy of the working tree over a stale ``.git``: the caller names the commit."""
    from gkabench import env

    env.git_sha.cache_clear()
    monkeypatch.setenv("GKABENCH_GIT_SHA", "c2ff3ca")
    try:
        assert env.git_sha() == "c2ff3ca"
        assert env.environment(None)["git_sha"] == "c2ff3ca"
    finally:
        env.git_sha.cache_clear()
