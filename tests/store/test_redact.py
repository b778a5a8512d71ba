"""Secrets are masked in messages and records; ordinary text is left alone."""

import pytest

from store.redact import redact, redact_value, register_secret, strip_credentials


@pytest.mark.parametrize("text, expected", [
    ("answered 400: invalid credentials: Bearer abc.DEF-123_x", "answered 400: invalid credentials: Bearer ***"),
    ("http://user:pw@127.0.0.1:8000/v1/completions failed", "http://***@127.0.0.1:8000/v1/completions failed"),
    ("key sk-proj-abcdefghijklmnop1234 here", "key *** here"),
    ("token hf_abcdefghijklmnopqrstu", "token ***"),
    ('{"password": "hunter2"}', '{"password": "***"}'),
    ("see /home/u/skdistillationcorpus2024/x and skd.duckdb", "see /home/u/skdistillationcorpus2024/x and skd.duckdb"),
    ("PersonX asks for a token of thanks", "PersonX asks for a token of thanks"),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_registered_secrets_are_masked_anywhere_in_nested_values():
    register_secret("plain-secret-value-42")
    assert redact_value({"a": ["x plain-secret-value-42 y", 3], "b": None}) == {"a": ["x *** y", 3], "b": None}
    assert strip_credentials("https://u:p@host/v1") == "https://host/v1"
