"""Local-only routes: loopback client and loopback Host, or the admin key."""

from __future__ import annotations

from multidict import CIMultiDict

from midway.access import is_local_request, local_or_admin
from midway.config import Settings
from midway.context import Midway
from midway.plugins import PluginHost


class FakeRequest:
    def __init__(self, remote: str, host: str, headers: dict[str, str] | None = None) -> None:
        self.remote = remote
        self.headers = CIMultiDict(headers or {})
        self.url = type("U", (), {"host": host})()


def test_rebinding_names_are_not_local(monkeypatch):
    assert is_local_request(FakeRequest("127.0.0.1", "127.0.0.1"))  # type: ignore[arg-type]
    assert is_local_request(FakeRequest("::1", "[::1]"))  # type: ignore[arg-type]
    assert is_local_request(FakeRequest("127.0.0.1", "localhost"))  # type: ignore[arg-type]
    assert not is_local_request(FakeRequest("127.0.0.1", "evil.example"))  # type: ignore[arg-type]
    assert not is_local_request(FakeRequest("10.1.2.3", "127.0.0.1"))  # type: ignore[arg-type]
    monkeypatch.setenv("MW_ADMIN", "adm-secret")
    midway = Midway(Settings(admin_key="env:MW_ADMIN"), PluginHost())
    remote = FakeRequest("10.1.2.3", "gw.example", {"authorization": "Bearer adm-secret"})
    assert local_or_admin(remote, midway)  # type: ignore[arg-type]
    wrong = FakeRequest("10.1.2.3", "gw.example", {"x-api-key": "adm-secreT"})
    assert not local_or_admin(wrong, midway)  # type: ignore[arg-type]
