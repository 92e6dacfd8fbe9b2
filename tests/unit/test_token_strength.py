"""Caller tokens that are obviously not random are refused at start (BILLING_AUTH_TOKENS)."""

from __future__ import annotations

import secrets
import string

import pytest

from billing_service.config import ConfigError, Settings, parse_auth_tokens

WEAK = {
    "one character": "a" * 32,
    "one character, long": "x" * 64,
    "two characters": "ab" * 16,
    "four-letter alphabet": "abcd" * 8,
    "digits counting up": "0123456789" * 4,
    "hex counting up": "0123456789abcdef" * 2,
    "letters counting up": string.ascii_lowercase + "ABCDEF",
    "letters counting down": string.ascii_lowercase[::-1] + "ZYXWVU",
    "a word repeated": "password" * 4,
    "a random half repeated": "k3J9xP2mQ7vB1nZ5" * 2,
    "one different character": "a" * 40 + "1",
    "mostly zeros": "0" * 30 + "17",
    "keyboard row": "qwertyuiopqwertyuiopqwertyuiopqw",
}


@pytest.mark.parametrize("token", WEAK.values(), ids=WEAK.keys())
def test_obviously_weak_tokens_are_refused_without_echoing_them(token: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_auth_tokens(f"checkout:{token}")
    message = str(err.value)
    assert "checkout" in message and "random" in message
    assert token not in message and token[:12] not in message


def test_the_refusal_stops_the_settings() -> None:
    with pytest.raises(ConfigError, match="BILLING_AUTH_TOKENS"):
        Settings.from_env({"BILLING_AUTH_MODE": "token", "BILLING_AUTH_TOKENS": "svc:" + "a" * 32})


@pytest.mark.parametrize(
    "generate",
    [
        lambda: secrets.token_hex(16),  # 32 hex characters: the shortest accepted
        lambda: secrets.token_hex(32),  # openssl rand -hex 32
        lambda: secrets.token_urlsafe(24),
        lambda: secrets.token_urlsafe(32),
        lambda: "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32)),
    ],
    ids=["hex16", "hex32", "urlsafe24", "urlsafe32", "alnum32"],
)
def test_random_tokens_are_accepted(generate: object) -> None:
    tokens = [generate() for _ in range(3000)]  # type: ignore[operator]
    parsed = parse_auth_tokens(",".join(f"svc{n}:{t}" for n, t in enumerate(tokens)))
    assert len(parsed) == len(tokens)
