"""Fixtures of the deploy tests: midway's image built from deploy/Containerfile on the local
base (:mod:`podman_helpers`), and containers removed after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from podman_helpers import IMAGE, ROOT, Container, build, ensure_base, podman


@pytest.fixture(scope="session")
def image() -> str:
    """midway's image from deploy/Containerfile (the layer cache makes a rebuild quick)."""
    ensure_base()
    build(IMAGE, ROOT / "deploy" / "Containerfile")
    return IMAGE


@pytest.fixture
def run_container() -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def run(options: list[str], image: str, command: list[str], name: str) -> Container:
        podman("rm", "-f", name, check=False)
        podman("run", "-d", "--name", name, *options, image, *command)
        container = Container(name)
        started.append(container)
        return container

    yield run
    for container in started:
        # -v: the image's anonymous /var/lib/midway volume too; tests name their data volume
        # after the container
        podman("rm", "-f", "-v", "-t", "0", container.name, check=False)
        podman("volume", "rm", "-f", container.name, check=False)
