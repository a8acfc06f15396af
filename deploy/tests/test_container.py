"""midway's image (deploy/Containerfile), built and run with podman as a team would run it:
read-only root file system, uid 10001, the data dir a volume, the config mounted, secrets in
the environment. In front of the fake upstream (the one ``midway mock-upstream`` serves, here
in the test's process so it can be scripted) and a PostgreSQL of the test's own, both on the
host's loopback (``--network host``)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import pytest
from podman_helpers import BASE, ROOT, Container, podman

from midway.testing import FakeUpstream, PrivatePostgres, Reply
from midway.testing_services import free_port, wait_for

CLIENT_KEY = "mw-container-test-key-0001"
UPSTREAM_KEY = "sk-ant-container-upstream-0001"
pytestmark = pytest.mark.timeout(300)


def config(tmp_path: Path, port: int, drain_delay: float = 0) -> Path:
    path = tmp_path / "midway.toml"
    path.write_text(f"""
[midway]
port = {port}
upstream_api_key = "env:ANTHROPIC_API_KEY"
shutdown_timeout = 20
drain_delay = {drain_delay}

[[midway.client_keys]]
key = "{CLIENT_KEY}"
name = "container-test"

[audit]
store = "env:MIDWAY_PG_DSN"
schema = "container_audit"

[billing]
schema = "container_billing"
""")
    path.chmod(0o644)
    return path


def start(run_container: Callable[..., Container], image: str, tmp_path: Path,
          fake_upstream: FakeUpstream, postgres: PrivatePostgres, drain_delay: float = 0
          ) -> tuple[Container, str]:
    port = free_port()
    volume = f"midway-test-{uuid.uuid4().hex[:8]}"
    container = run_container(
        ["--network", "host", "--read-only", "--read-only-tmpfs=false",
         "-v", f"{volume}:/var/lib/midway",
         "-v", f"{config(tmp_path, port, drain_delay)}:/etc/midway/midway.toml:ro",
         "-e", f"ANTHROPIC_API_KEY={UPSTREAM_KEY}",
         "-e", f"MIDWAY_UPSTREAM={fake_upstream.url}",
         "-e", f"MIDWAY_PG_DSN={postgres.dsn}",
         "-e", f"MIDWAY_BILLING__STORE={postgres.dsn}"],
        image, [], name=volume)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=60, interval=0.1)
    except AssertionError:
        raise AssertionError(f"midway's container not ready:\n{container.logs()}") from None
    return container, url


def test_the_image_is_locked_down(image: str) -> None:
    script = ("id -u; id -g; for c in gcc cc c++ make; do command -v $c || true; done; "
              "ls /run/secrets 2>&1 || true; touch /opt/x 2>&1 || true; "
              "touch /var/lib/midway/x && echo data-writable")
    out = podman("run", "--rm", "--read-only", "--read-only-tmpfs=false",
                 "--entrypoint", "sh", image, "-c", script).stdout.splitlines()
    assert out[:2] == ["10001", "10001"]
    assert not [line for line in out if line.startswith("/")], out  # no compiler on PATH
    assert any("Read-only file system" in line for line in out), out
    assert out[-1] == "data-writable"
    inspect = json.loads(podman("image", "inspect", image).stdout)[0]
    config_ = inspect["Config"]
    assert config_["User"] == "10001:10001"
    assert config_["Entrypoint"] == ["midway"]
    assert config_["Cmd"] == ["serve", "--host", "0.0.0.0"]
    assert "/var/lib/midway" in config_["Volumes"]
    assert "/readyz" in " ".join(inspect["Healthcheck"]["Test"])
    print(f"image size: {inspect['Size'] / 1e6:.0f} MB")


def test_the_ca_build_secret_is_in_no_layer(tmp_path: Path) -> None:
    """The build stage, built afresh with a CA bundle carrying a marker: pip reached the
    index through it (the build succeeds only with the proxy's CA), and no layer holds it."""
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    assert bundle, "PIP_CERT or SSL_CERT_FILE must name the CA bundle the host trusts"
    marker = f"midway-ca-marker-{uuid.uuid4().hex}"
    ca = tmp_path / "ca.pem"
    ca.write_text(Path(bundle).read_text() + f"\n# {marker}\n")
    tag = f"localhost/midway-ca-test:{marker[-8:]}"
    podman("build", "--no-cache", "--target", "build", "-q", "-f",
           str(ROOT / "deploy" / "Containerfile"), "--build-arg", f"BASE={BASE}",
           "--secret", f"id=ca,src={ca}", "-t", tag, str(ROOT), timeout=900)
    try:
        archive = tmp_path / "image.tar"
        podman("image", "save", "-o", str(archive), tag)
        layers = archive.read_bytes()
        assert b"midway_audit/handoff" in layers  # the archive's layers are searchable
        assert marker.encode() not in layers
    finally:
        podman("rmi", "-f", tag, check=False)


def test_serving_publicly_without_client_keys_is_refused(image: str) -> None:
    result = podman("run", "--rm", "--read-only", image, check=False, timeout=120)
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr
    # config check works through the entrypoint
    assert podman("run", "--rm", "--read-only", image, "config", "check",
                  check=False).returncode in (0, 1)


def test_relays_and_readiness_follows_its_postgresql(
        image: str, tmp_path: Path, fake_upstream: FakeUpstream,
        private_postgres: PrivatePostgres, run_container: Callable[..., Container]) -> None:
    container, url = start(run_container, image, tmp_path, fake_upstream, private_postgres)
    # the image's HEALTHCHECK (/readyz) as podman runs it
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0
    client = anthropic.Anthropic(api_key=CLIENT_KEY, base_url=url, max_retries=0)
    answer = client.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                                    messages=[{"role": "user", "content": "hi"}])
    assert answer.content[0].type == "text"
    (seen,) = fake_upstream.messages_requests
    assert seen.headers["x-api-key"] == UPSTREAM_KEY  # the client's key never goes upstream
    assert httpx.get(f"{url}/livez").status_code == 200

    private_postgres.stop()
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 503, timeout=30)
    body = httpx.get(f"{url}/readyz", timeout=5).json()
    assert body["status"] == "not ready" and body["problems"]
    assert httpx.get(f"{url}/livez").status_code == 200  # alive: no reason to restart it
    assert podman("healthcheck", "run", container.name, check=False).returncode != 0

    private_postgres.start()
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, timeout=30)
    answer = client.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                                    messages=[{"role": "user", "content": "again"}])
    assert answer.content[0].type == "text"


def test_sigterm_during_a_stream_finishes_it_and_exits_0(
        image: str, tmp_path: Path, fake_upstream: FakeUpstream,
        private_postgres: PrivatePostgres, run_container: Callable[..., Container]) -> None:
    container, url = start(run_container, image, tmp_path, fake_upstream, private_postgres,
                           drain_delay=2)
    text = " ".join(f"word{i}" for i in range(200))
    fake_upstream.reply(Reply(content=[{"type": "text", "text": text}], delay=0.1,
                              text_chunks=40))  # ~4 s of stream
    client = anthropic.Anthropic(api_key=CLIENT_KEY, base_url=url, max_retries=0)
    events: list[str] = []
    received: list[str] = []
    first = threading.Event()
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                        messages=[{"role": "user", "content": "hi"}]) as s:
                for event in s:
                    events.append(event.type)
                    first.set()
                received.append(s.get_final_text())
        except BaseException as exc:  # reported by the test below
            failure.append(exc)
            first.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(30)
    signalled = time.monotonic()
    container.signal("TERM")
    # /readyz 503 at once, while the listener still takes requests during drain_delay
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 503, timeout=1.5)
    assert time.monotonic() - signalled < 1.5
    reader.join(60)
    assert not failure, failure
    assert events[-1] == "message_stop"
    assert events.count("content_block_delta") == 40
    assert received == [text]  # the whole answer, nothing cut
    assert container.wait(timeout=40) == 0, container.logs()
