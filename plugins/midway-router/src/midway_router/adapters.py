"""Translation adapters for non-Anthropic upstreams, imported only when a config names one
(so Anthropic-only deployments need neither the adapters' code paths nor botocore)."""

from __future__ import annotations

from typing import Any

from midway_router.settings import UpstreamSpec


def for_upstream(spec: UpstreamSpec) -> Any:
    """The adapter every key of ``spec`` shares (``None``: native Anthropic)."""
    if spec.kind == "openai":
        from midway_router.openai_adapter import OpenAIAdapter

        return OpenAIAdapter(max_tokens_field=spec.max_tokens_field,
                             ping_interval=spec.ping_interval)
    return None


def bedrock(spec: UpstreamSpec, access_key_id: str, secret_access_key: str,
            session_token: str | None) -> Any:
    """A Bedrock adapter signing with one set of AWS credentials."""
    from midway_router.bedrock_adapter import BedrockAdapter

    assert spec.region is not None  # checked in settings.parse
    return BedrockAdapter(region=spec.region, access_key_id=access_key_id,
                          secret_access_key=secret_access_key, session_token=session_token,
                          ping_interval=spec.ping_interval)


def vertex(spec: UpstreamSpec, account_json: str) -> Any:
    """A Vertex AI adapter minting tokens for one service account (its JSON, resolved)."""
    import orjson

    from midway.config import ConfigError
    from midway_router.vertex_adapter import VertexAdapter

    where = f"[router] upstream {spec.name!r}"
    try:
        info = orjson.loads(account_json)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{where}: service_account is not JSON (give file:/path/key.json, "
                          "or env:NAME holding the key file's JSON)") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigError(f"{where}: service_account is not a service account key file "
                          "(its \"type\" must be \"service_account\")")
    assert spec.region is not None
    try:
        return VertexAdapter(info, region=spec.region, project=spec.project)
    except (ValueError, KeyError) as exc:  # google-auth names the missing field, not the key
        raise ConfigError(f"{where}: service_account: {exc}") from None
