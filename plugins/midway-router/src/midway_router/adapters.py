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
