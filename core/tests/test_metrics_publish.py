"""A worker's metrics snapshot for its peers and ``midway status``: written when it changed."""

from __future__ import annotations

import json
from pathlib import Path

from midway.metrics import Metrics


def test_publish_writes_a_changed_snapshot_only(tmp_path: Path) -> None:
    metrics = Metrics(worker=3, peers_dir=tmp_path / "run")
    path = tmp_path / "run" / "worker-3.json"
    metrics.publish()
    first = path.stat().st_ino
    metrics.publish()  # nothing changed: the file is not replaced (an idle gateway is quiet)
    assert path.stat().st_ino == first
    metrics.requests[("200", "claude-sonnet-4-6", "anthropic", "alice")] += 1
    metrics.publish()
    assert path.stat().st_ino != first
    assert json.loads(path.read_text())["requests"] == [
        ["200", "claude-sonnet-4-6", "anthropic", "alice", 1]]
    path.unlink()  # removed from outside: written again though nothing changed
    metrics.publish()
    assert json.loads(path.read_text())["worker"] == 3
