"""Secrets never reach the terminal or the database: API keys, bearer tokens and URL credentials are
masked in every message skd prints and every config or error it records. Backends register the secret
values they hold, so a server that echoes a key back in an error body is masked too, whatever its format."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_secrets: set[str] = set()
# `Bearer <token>` (as an echoed Authorization header), `user:password@` in a URL, and keys shaped like
# the common providers' (sk-..., hf_...), in case one reaches a message through some other path.
_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}"), rf"\1 {MASK}"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@:]*(?::[^\s/@]*)?@"), rf"\1{MASK}@"),
    (re.compile(r"\b(?:sk-|sk_|hf_|rk_|pk_)[A-Za-z0-9_\-]{16,}"), MASK),
    (re.compile(r"(?i)\b(api[_-]?key|access[_-]?token|password)(\"?\s*[:=]\s*\"?)[^\s\"',;&]+"), rf"\1\2{MASK}"),
]


def register_secret(value: str | None) -> None:
    """A value to mask wherever it appears (at least 4 characters, so short strings are not mangled)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def redact_value(value: Any) -> Any:
    """`redact` applied to every string inside a JSON-like value (configs, summaries)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def strip_credentials(url: str) -> str:
    """`url` without a `user:password@` part, for messages and records."""
    return _PATTERNS[1][0].sub(r"\1", url)
