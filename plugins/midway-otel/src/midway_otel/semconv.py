"""The OpenTelemetry GenAI semantic conventions this plugin implements: names in one place.

Version: semantic-conventions v1.41.0 (docs/gen-ai: gen-ai-spans.md, gen-ai-metrics.md,
anthropic.md), status Development.
"""

from __future__ import annotations

SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_TOP_K = "gen_ai.request.top_k"
REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TTFC = "gen_ai.response.time_to_first_chunk"
USAGE_INPUT = "gen_ai.usage.input_tokens"
USAGE_OUTPUT = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_CREATION = "gen_ai.usage.cache_creation.input_tokens"
CONVERSATION_ID = "gen_ai.conversation.id"
TOKEN_TYPE = "gen_ai.token.type"  # noqa: S105
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
HTTP_STATUS = "http.response.status_code"
HTTP_METHOD = "http.request.method"

CHAT = "chat"
ANTHROPIC = "anthropic"

METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"  # noqa: S105
METRIC_DURATION = "gen_ai.client.operation.duration"
METRIC_TTFC = "gen_ai.client.operation.time_to_first_chunk"
# The advisory bucket boundaries the conventions give for each metric.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                   40.96, 81.92)

# midway's own attributes (not in the conventions).
SESSION_ID = "midway.claude_code.session_id"
AGENT_ID = "midway.claude_code.agent_id"
PARENT_AGENT_ID = "midway.claude_code.parent_agent_id"
PRINCIPAL_ID = "midway.principal.id"
PRINCIPAL_NAME = "midway.principal.name"
PRINCIPAL_TEAM = "midway.principal.team"
COST_USD = "midway.cost_usd"
EXCHANGE_ID = "midway.request.id"
UPSTREAM_NAME = "midway.upstream.name"
ATTEMPT_NUMBER = "midway.attempt.number"
ATTEMPT_RETRIED = "midway.attempt.retried"
CACHE_RESULT = "midway.cache"
ROUTE = "midway.route"
FIRST_CHUNK_EVENT = "gen_ai.first_chunk"
