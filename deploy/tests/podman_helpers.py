"""Podman for the deploy tests: the settings this kind of machine needs (containers.conf beside
this file, unless CONTAINERS_CONF names another), a local Debian base image built once per
machine with debootstrap (nothing here can pull from a registry), image builds, containers.
See docs/deploying.md#testing-the-deployment-files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASE = os.environ.get("MIDWAY_DEPLOY_BASE", "localhost/debian-bookworm:base")
IMAGE = "localhost/midway:deploy-test"
os.environ.setdefault("CONTAINERS_CONF", str(HERE / "containers.conf"))


def podman(*args: str, check: bool = True, timeout: float = 600,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("podman")
    if binary is None:
        raise AssertionError("podman is not installed: apt-get install -y podman runc "
                             "debootstrap (docs/deploying.md#testing-the-deployment-files)")
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout,
                            input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def _apt_mirror() -> str:
    for source in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = source.read_text()
        except OSError:
            continue
        match = re.search(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)\s*$", text, re.M)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def ensure_base() -> None:
    """The Debian base image, made once per machine (~40 s) and kept."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise AssertionError(f"no image {BASE} and no debootstrap to build it: "
                             "apt-get install -y debootstrap")
    with tempfile.TemporaryDirectory(prefix="midway-base-") as rootfs:
        subprocess.run([debootstrap, "--variant=minbase",
                        "--include=python3,python3-venv,ca-certificates", "bookworm", rootfs,
                        _apt_mirror()], check=True, capture_output=True, timeout=900)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        subprocess.run([shutil.which("podman") or "podman", "import", "-", BASE],
                       stdin=tar.stdout, check=True, capture_output=True, timeout=600)
        tar.wait()


def build(tag: str, containerfile: Path, *args: str, context: Path = ROOT) -> None:
    secret = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    secrets = ["--secret", f"id=ca,src={secret}"] if secret else []
    podman("build", "--format", "docker", "-q", "-f", str(containerfile),
           "--build-arg", f"BASE={BASE}", *secrets, *args, "-t", tag, str(context),
           timeout=1200)


class Container:
    """One ``podman run -d``; removed at the end of the test."""

    def __init__(self, name: str) -> None:
        self.name = name

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def signal(self, sig: str) -> None:
        podman("kill", "--signal", sig, self.name)

    def wait(self, timeout: float) -> int:
        """The exit status, once the container stopped (within ``timeout`` seconds)."""
        try:
            return int(podman("wait", self.name, timeout=timeout).stdout.split()[-1])
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s:\n"
                                 f"{self.logs()}") from None
