"""Canary secrets sent every way a client or an upstream could send them are found nowhere
in the stores' bytes."""

from __future__ import annotations

import secrets
import string

import anthropic
import orjson
from conftest import data_dir, flush, get, records
from hypothesis import given, settings
from hypothesis import strategies as st

from midway.testing import Reply, wait_for
from midway_audit.redact import Redactor


def _rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def test_canary_secrets_found_nowhere_in_sqlite_or_jsonl(fake_upstream, audited):
    marker = _rand(12)
    canaries = {
        "anthropic": f"sk-ant-api03-{marker}A{_rand(40)}",
        "openai": f"sk-proj-{marker}B{_rand(40)}",
        "aws_id": "AKIA" + _rand(16, string.ascii_uppercase + string.digits),
        "aws_secret": _rand(40),
        "pem": f"{marker}C{_rand(60)}",
        "email": f"canary.{marker}D@example.com",
        "bearer": f"{marker}E{_rand(30)}",
        "cookie": f"{marker}F{_rand(20)}",
        "custom_header": f"{marker}G{_rand(20)}",
        "custom_pattern": f"ACME-{marker}H",
    }
    prompt = (f"my key is {canaries['anthropic']} and {canaries['openai']}; aws "
              f"{canaries['aws_id']} aws_secret_access_key={canaries['aws_secret']}\n"
              f"-----BEGIN RSA PRIVATE KEY-----\n{canaries['pem']}\n"
              "-----END RSA PRIVATE KEY-----\n"
              f"mail {canaries['email']}, curl -H 'Authorization: Bearer {canaries['bearer']}'"
              f" internal id {canaries['custom_pattern']}" + " and more context" * 80)
    # (over 1 KB: the message is stored as a body part, see parts.py)
    running = audited(jsonl="audit.jsonl", redact_patterns={"acme_id": r"ACME-[A-Za-z0-9]+"})
    # the upstream echoes secrets back, split across many small deltas
    fake_upstream.reply(Reply(content=[{"type": "text", "text": f"Noted {canaries['email']} "
                                        f"and {canaries['openai']}"}], text_chunks=12),
                        Reply(content=[{"type": "text", "text": f"key {canaries['anthropic']}"}]))
    client = anthropic.Anthropic(base_url=running.url, api_key=canaries["anthropic"],
                                 max_retries=0, default_headers={
                                     "Cookie": f"session={canaries['cookie']}",
                                     "X-Internal-Token": canaries["custom_header"],
                                     "X-Team": "search"})
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=5,
                                messages=[{"role": "user", "content": prompt}]) as stream:
        stream.get_final_message()
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                           messages=[{"role": "user", "content": prompt}])
    wait_for(lambda: len(records(running)) == 2)
    record = get(running, records(running)[0]["id"])
    flush(running)  # drain and close: everything that will ever be written is on disk

    files = [p for p in data_dir(running).rglob("audit*") if p.is_file()]
    assert {p.name for p in files} >= {"audit.db", "audit.jsonl"}
    blob = b"".join(p.read_bytes() for p in files)
    assert len(blob) > 1000
    for name, canary in canaries.items():
        assert canary.encode() not in blob, f"{name} canary leaked"
    assert marker.encode() not in blob  # not even a fragment of one

    # what was masked is still readable as what it was
    assert record["request_parts"] is True
    body = orjson.loads(record["request_body"])
    text = body["messages"][0]["content"]
    for label in ("anthropic_key", "openai_key", "aws_access_key", "aws_secret_key",
                  "private_key", "email", "bearer_token", "acme_id"):
        assert f"[REDACTED:{label}]" in text, label
    assert record["request_headers"]["x-team"] == "search"
    assert not {"x-api-key", "authorization", "cookie", "x-internal-token"} & \
        set(record["request_headers"])
    assert "[REDACTED:" in record["response_body"]


def test_every_default_pattern_masks_its_secret_and_only_where_one_starts():
    """Each default pattern on its own (the canaries above do not cover every shape): every
    AWS and GitHub prefix, and no match glued to a preceding word character."""
    from midway_audit.redact import _AWS_PREFIXES, Redactor

    redactor = Redactor()
    upper = string.ascii_uppercase + string.digits
    cases = {
        "anthropic_key": ["sk-ant-api03-" + _rand(40)],
        "openai_key": ["sk-proj-" + _rand(40), "sk-" + _rand(48)],
        "aws_access_key": [p + _rand(16, upper) for p in _AWS_PREFIXES],
        "github_token": [f"gh{c}_" + _rand(36) for c in "pousr"] + ["github_pat_" + _rand(60)],
        "slack_token": ["xoxb-" + _rand(24)],
        "google_api_key": ["AIza" + _rand(35)],
    }
    for label, secrets_ in cases.items():
        for secret in secrets_:
            masked = redactor.text(f'{{"text":"see {secret} here"}}')
            assert masked == f'{{"text":"see [REDACTED:{label}] here"}}', (label, secret)
    # glued to a word: not a key's start (e.g. a longer identifier that contains one)
    for glued in ("XAKIA" + _rand(16, upper), "xghp_" + _rand(36), "zAIza" + _rand(35),
                  "axoxb-" + _rand(24)):
        assert redactor.text(glued) == glued


def test_patterns_sharing_a_guard_scan_each_find_their_own_in_one_text():
    """The sk… keys and the A… keys are looked for only when their shared start is in the
    text: several of one group in one text are all masked (the scan is redone after each
    replacement), and a text with none of them keeps its near misses."""
    from midway_audit.redact import Redactor

    redactor = Redactor()
    upper = string.ascii_uppercase + string.digits
    secrets_ = {"anthropic_key": "sk-ant-api03-" + _rand(40),
                "openai_key": "sk-proj-" + _rand(40),
                "stripe_key": "sk_live_" + _rand(24),
                "aws_access_key": "AKIA" + _rand(16, upper),
                "google_api_key": "AIza" + _rand(35)}
    text = " and ".join(secrets_.values())
    assert redactor.text(text) == " and ".join(f"[REDACTED:{name}]" for name in secrets_)
    for name, secret in secrets_.items():
        assert redactor.text(f"ask {secret}, risk-free") == f"ask [REDACTED:{name}], risk-free"
    near = "a task-list, desk_top, AKI, AIz, Amazon, sk"
    assert redactor.text(near) == near


# Pieces a text is made of for the property test below: each pattern's secrets (whole, cut
# short, glued to a word), their literals alone, near misses, JSON punctuation, words.
_PIECES = [
    "sk-ant-api03-AAAAbbbb1234", "sk-proj-" + "x" * 30, "sk-" + "Z9" * 12, "sk_live_" + "a" * 20,
    "AKIA" + "B" * 16, "ASIA" + "7" * 16, "AIza" + "q" * 35, "aws_secret_access_key",
    '\\":\\"', " = ", "a" * 40, "ghp_" + "c" * 36, "github_pat_" + "d" * 40, "xoxb-" + "e" * 12,
    "mw-abcdefghijkl_" + "F" * 43, "eyJhbGciOiJIUzI1", ".eyJzdWIiOiIxMjM0", ".sig-_x",
    "rk_test_" + "g" * 16, "hf_" + "H" * 34, "Bearer ", "bEaReR\t", "tok.en~+/AAAA==",
    "-----BEGIN RSA PRIVATE KEY-----", "MIIEpAIBAAKC\\n", "-----END RSA PRIVATE KEY-----",
    "-----BEGIN", "gh", "xox", "mw-", "eyJ", "rk_", "hf_", "sk", "A", "task-", "desk_",
    "user@example.com", "@", "x", "_", "-", '"', ",", ":", "{", "}", " ", "\n", "é", "🙂",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.text(max_size=6), max_size=24))
def test_literal_checks_and_guards_change_nothing_the_patterns_alone_would_mask(
        pieces: list[str]) -> None:
    """A pattern is skipped when none of its literals (or its guard) is in the text: the
    result is exactly every pattern's substitution applied in turn, then the e-mail masking,
    as if nothing were skipped."""
    from midway_audit.redact import Redactor, _mask_emails

    redactor = Redactor()
    text = "".join(pieces)
    expected = text
    for pattern in redactor.patterns:
        expected = pattern.regex.sub(pattern.replacement, expected)
    assert redactor.text(text) == _mask_emails(expected)


def test_long_body_parts_alike_at_both_ends_are_never_mistaken_for_each_other():
    """Long parts are looked up by their length and ends: a part that differs only in the
    middle (here: a secret) is redacted on its own, and either one found again is its own."""
    redactor = Redactor()
    filler = "x" * 600
    clean = orjson.dumps({"text": f"{filler} nothing-to-hide-at-all-xy {filler}"})
    secret = orjson.dumps({"text": f"{filler} sk-ant-api03-abcdefghijkl {filler}"})
    assert len(clean) == len(secret) and clean[:64] == secret[:64] and \
        clean[-64:] == secret[-64:]
    for _ in range(2):
        assert redactor.part(clean)[0] == clean.decode()
        assert "[REDACTED:anthropic_key]" in redactor.part(secret)[0]
    assert redactor.part(clean)[1] is not None  # long enough to be stored as a part
    # the budget counts what the entries hold: evicting them all leaves nothing counted
    redactor.parts_budget = 0
    redactor.part(orjson.dumps({"text": filler}))
    assert redactor._parts_size == 0 and not redactor._parts
