"""Background work survives a full disk (issue 18.6): the metrics publisher of a real
``midway serve`` writes its snapshot on a tmpfs of 64 KiB that the test fills up and frees,
twice. The publisher keeps going, resumes as soon as there is room, and the log has one line
naming the disk full per episode (and one when it works again), not one per attempt."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import cluster
import httpx
import pytest

from midway.testing import wait_for

FAILED = "metrics: publishing this worker's snapshot failed (disk full)"
AGAIN = "metrics: publishing this worker's snapshot works again"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """``data0/run`` (where instance 0 publishes its state) on a tmpfs of 64 KiB."""
    run = tmp_path / "data0" / "run"
    run.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(run)], check=True)
    try:
        yield run
    finally:
        subprocess.run(["umount", "-l", str(run)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system has no room left."""
    with path.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def requests_in(snapshot: Path) -> int:
    try:
        data = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        return -1
    return sum(row[-1] for row in data["requests"])


def test_metrics_publisher_survives_a_full_disk_with_one_line_per_episode(
        fake_upstream, tmp_path, tiny_disk):
    config = tmp_path / "midway.toml"
    config.write_text("")
    instance, = cluster.start_instances(config, fake_upstream.url, tmp_path, "", workers=(1,))
    try:
        snapshot = tiny_disk / f"port-{instance.port}" / "worker-0.json"
        wait_for(lambda: requests_in(snapshot) == 0, timeout=10)
        body = {"model": "claude-sonnet-4-6", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}
        for episode in (1, 2):
            filler = tiny_disk / "filler"
            fill(filler)
            answer = httpx.post(f"{instance.url}/v1/messages", json=body, timeout=10,
                                headers={"x-api-key": "sk-ant-test", "anthropic-version": "1"})
            assert answer.status_code == 200
            wait_for(lambda: instance.log.read_text().count(FAILED) == episode, timeout=10)
            # a stretch of full disk (a round a second fails), not a synchronisation
            time.sleep(3)
            assert requests_in(snapshot) < episode
            filler.unlink()
            wait_for(lambda: requests_in(snapshot) == episode, timeout=10)  # resumed
            wait_for(lambda: instance.log.read_text().count(AGAIN) == episode, timeout=10)
    finally:
        codes = cluster.stop_instances([instance])
    log = instance.log.read_text()
    assert codes == [0], log
    assert log.count(FAILED) == 2 and log.count(AGAIN) == 2, log
    assert "cannot rollback" not in log and "Traceback" not in log, log
    attempts = [int(n) for n in re.findall(r"works again after (\d+) failed attempt", log)]
    assert len(attempts) == 2 and min(attempts) >= 2, attempts  # logged once, failed often

