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


def request(remote: str, host: str, **headers: str) -> FakeRequest:
    return FakeRequest(remote, host.rsplit(":", 1)[0] if "]" not in host else host,
                       {"host": host, **{k.replace("_", "-"): v for k, v in headers.items()}})


def test_metrics_auth_defaults_to_local_or_admin_with_client_keys(monkeypatch):
    from midway.access import metrics_refusal
    from midway.config import ClientKey

    monkeypatch.setenv("MW_ADMIN", "adm-secret")
    keyed = Settings(admin_key="env:MW_ADMIN", host="0.0.0.0",
                     client_keys=[ClientKey(key="mw-k", name="a")])
    midway = Midway(keyed, PluginHost())
    assert metrics_refusal(request("127.0.0.1", "127.0.0.1:8910"), midway) is None  # type: ignore[arg-type]
    refused = metrics_refusal(request("10.1.2.3", "gw.example"), midway)  # type: ignore[arg-type]
    assert refused is not None and "metrics_auth" in refused
    assert metrics_refusal(request("10.1.2.3", "gw.example", x_api_key="adm-secret"),  # type: ignore[arg-type]
                           midway) is None
    keyed.metrics_auth = "none"
    assert metrics_refusal(request("10.1.2.3", "gw.example"), midway) is None  # type: ignore[arg-type]
    keyed.metrics_auth = "admin"
    assert metrics_refusal(request("127.0.0.1", "127.0.0.1"), midway) is not None  # type: ignore[arg-type]
    # Without client keys (a loopback gateway) /metrics stays open to local tools, but not to
    # a rebound name.
    open_ = Midway(Settings(), PluginHost())
    assert metrics_refusal(request("127.0.0.1", "localhost:8910"), open_) is None  # type: ignore[arg-type]
    assert metrics_refusal(request("127.0.0.1", "evil.example"), open_) is not None  # type: ignore[arg-type]


def test_metrics_auth_is_checked_on_load(tmp_path):
    import pytest

    from midway.config import ConfigError, load_settings

    path = tmp_path / "m.toml"
    path.write_text('[midway]\nmetrics_auth = "sometimes"\nallowed_hosts = ["gw.internal"]\n')
    with pytest.raises(ConfigError, match="metrics_auth must be one of"):
        load_settings(path, environ={})
    settings = load_settings(None, environ={"MIDWAY_ALLOWED_HOSTS": "a.internal, b.internal",
                                            "MIDWAY_METRICS_AUTH": "admin"})
    assert settings.allowed_hosts == ["a.internal", "b.internal"]
    assert settings.metrics_auth == "admin"


def test_host_refusal_answers_only_names_of_the_gateway():
    """The Host rule plugins' routes use (and /v1/* and /metrics without client keys)."""
    from midway.access import host_refusal
    loopback = Settings()  # listens on 127.0.0.1
    for name in ("127.0.0.1:8910", "localhost", "LOCALHOST.:8910", "[::1]:8910", "a.localhost"):
        assert host_refusal(request("127.0.0.1", name), loopback) is None  # type: ignore[arg-type]
    rebound = request("127.0.0.1", "rebound.example:8910")
    assert "DNS rebinding" in (host_refusal(rebound, loopback) or "")  # type: ignore[arg-type]
    # what the caller knows the gateway by (a public URL's host), and allowed_hosts
    assert host_refusal(rebound, loopback, also=("rebound.example",)) is None  # type: ignore[arg-type]
    listed = Settings(allowed_hosts=["*.corp.example"])
    assert host_refusal(request("127.0.0.1", "gw.corp.example"), listed) is None  # type: ignore[arg-type]
    assert "allowed_hosts" in (host_refusal(rebound, listed) or "")  # type: ignore[arg-type]
    # a gateway listening publicly names itself by allowed_hosts only when they are set
    public = Settings(host="0.0.0.0")
    assert host_refusal(rebound, public) is None  # type: ignore[arg-type]
    assert host_refusal(rebound, loopback, loopback_names=False) is None  # type: ignore[arg-type]
    assert host_refusal(request("127.0.0.1", "x"), listed, loopback_names=False)  # type: ignore[arg-type]
