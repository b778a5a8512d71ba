"""The HTTP backend against a local server that fails on purpose (loopback only)."""

import pytest

from generators import Request, Sampling, make_teacher
from store import SkdError
from tests.local_http import JsonServer, choices

SECRET = "sk-test-do-not-print-0123456789"


class FlakyServer(JsonServer):
    """Answers OpenAI completions/chat; fails the first `fail` requests with `status`."""

    def __init__(self, fail=0, status=503, retry_after=None):
        super().__init__()
        self.fail, self.status, self.retry_after = fail, status, retry_after
        self.calls, self.bodies, self.auth = 0, [], []

    def respond(self, path, body, headers):
        self.calls += 1
        self.bodies.append(body)
        self.auth.append(headers.get("Authorization"))
        if self.calls <= self.fail:
            extra = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
            return self.status, extra, {"error": {"message": "busy, try later"}}
        answers = choices(path, body.get("n", 1), lambda i, chat: f"reply {i}" if chat else f" sample {i}")
        return 200, {}, {"choices": answers, "usage": {"completion_tokens": 3 * len(answers)}}


def teacher(url, **kw):
    return make_teacher("openai", "served-model", base_url=url, backoff=0.01, max_backoff=0.05, **kw)


def reqs():
    return [Request(model="served-model", sampling=Sampling(n=2, seed=4, stop=("\n",)), prompt="Say hi"),
            Request(model="served-model", sampling=Sampling(n=1), messages=(("user", "hello"),))]


def test_retries_5xx_then_succeeds_with_key_from_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FlakyServer(fail=3, status=503) as url:
        t = teacher(url, concurrency=1)
        out = t.generate(reqs())
    assert [[c.text for c in o] for o in out] == [[" sample 0", " sample 1"], ["reply 0"]]
    assert t.attempts == 5 and SECRET not in repr(t)


def test_request_body_and_auth(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = FlakyServer()
    with server as url:
        teacher(url).generate(reqs()[:1])
    body = server.bodies[0]
    assert body["model"] == "served-model" and body["n"] == 2 and body["seed"] == 4 and body["stop"] == ["\n"]
    assert server.auth == [f"Bearer {SECRET}"]


def test_429_honours_retry_after():
    server = FlakyServer(fail=1, status=429, retry_after=0)
    with server as url:
        out = teacher(url).generate(reqs()[:1])
    assert server.calls == 2 and len(out[0]) == 2


def test_persistent_failure_and_client_errors_are_one_line(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FlakyServer(fail=100, status=500) as url:
        with pytest.raises(SkdError, match=r"failed after 3 attempts \(last: HTTP 500\); rerun to resume") as e:
            teacher(url, max_retries=2).generate(reqs()[:1])
        assert SECRET not in str(e.value) and "\n" not in str(e.value)
    with FlakyServer(fail=100, status=400) as url:
        with pytest.raises(SkdError, match="answered 400: busy, try later"):
            teacher(url).generate(reqs()[:1])


def test_unreachable_endpoint_is_retried_then_reported():
    t = teacher("http://127.0.0.1:9/v1", max_retries=1, timeout=1)
    with pytest.raises(SkdError, match="failed after 2 attempts"):
        t.generate(reqs()[:1])


class PickyServer(FlakyServer):
    """Refuses (400) any request whose prompt or message says "too long", as an endpoint refuses a prompt past its
    context; answers the others."""

    def respond(self, path, body, headers):
        if "too long" in str(body.get("prompt") or body.get("messages")):
            return 400, {}, {"error": {"message": "maximum context length exceeded"}}
        return super().respond(path, body, headers)


def test_a_refused_request_is_a_recorded_failure_and_the_others_are_kept(tmp_path):
    from generators import make_recipe, run_generation
    from store import Store

    good, bad = reqs()[0], Request(model="served-model", sampling=Sampling(n=1), prompt="too long")
    with PickyServer() as url:
        out = teacher(url).generate([good, bad])
        assert [c.text for c in out[0]] == [" sample 0", " sample 1"]
        assert out[1][0].text == "" and out[1][0].finish_reason == "refused: 400: maximum context length exceeded"
        with pytest.raises(SkdError, match="answered 400: maximum context"):  # every request refused: the run's
            teacher(url).generate([bad, bad])
        # through a run: the refused request is a failed generation with its reason, the others are stored
        rows = tmp_path / "rows.jsonl"
        rows.write_text('{"a": "short"}\n{"a": "too long"}\n')
        recipe = make_recipe("template", {"input": str(rows), "prompt": "{{ row.a }}", "kind": "text",
                                          "parser": "regex", "regex": r"(?P<text>.+)"})
        stats = run_generation(tmp_path / "c.duckdb", recipe, teacher(url))
    assert stats.parsed == 1 and stats.failures == {"refused: 400: maximum context length exceeded": 1}
    with Store(tmp_path / "c.duckdb", read_only=True) as s:
        assert s.query("SELECT parsed_ok, error FROM generations ORDER BY parsed_ok").rows() == [
            (False, "refused: 400: maximum context length exceeded"), (True, None)]


class BrokenPromptServer(FlakyServer):
    """Answers 500 to any request whose prompt says "broken" (until `healed`), the others normally."""

    healed = False

    def respond(self, path, body, headers):
        if "broken" in str(body.get("prompt") or body.get("messages")) and not self.healed:
            return 500, {}, {"error": {"message": "upstream crashed"}}
        return super().respond(path, body, headers)


def test_a_request_that_keeps_failing_stops_the_run_after_the_others_are_stored(tmp_path):
    """The other requests of its batch were answered and paid for: they were thrown away, and paid again on every
    rerun, while the failing one stopped the run."""
    from generators import make_recipe, run_generation
    from store import Store

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"a": "fine one"}\n{"a": "broken"}\n{"a": "fine two"}\n')
    recipe = make_recipe("template", {"input": str(rows), "prompt": "{{ row.a }}", "kind": "text", "parser": "regex",
                                      "regex": r"(?P<text>.+)"})
    db = tmp_path / "c.duckdb"
    server = BrokenPromptServer()
    with server as url:
        with pytest.raises(SkdError, match=r"failed after 2 attempts \(last: HTTP 500\)"):
            run_generation(db, recipe, teacher(url, max_retries=1))
        with Store(db, read_only=True) as s:
            assert s.scalar("SELECT count(DISTINCT request_id) FROM generations") == 2  # the answered two are kept
        server.healed, before = True, server.calls
        stats = run_generation(db, recipe, teacher(url, max_retries=1))
    assert stats.already_done == 2 and stats.generated == 1 and server.calls - before == 1  # only the failed one


class NotAnAPIServer(FlakyServer):
    """A web page, or JSON without choices, at the base URL: what a proxy's login page or a wrong URL gives."""

    page = True

    def respond(self, path, body, headers):
        return (200, {}, b"<html>login</html>") if self.page else (200, {}, {"object": "list", "data": []})


def test_a_200_that_is_not_a_completion_is_one_line():
    for page, message in ((True, "answered 200 with no JSON"), (False, "answered 200 without choices")):
        server = NotAnAPIServer()
        server.page = page
        with server as url, pytest.raises(SkdError, match=message):
            teacher(url).generate(reqs()[:1])


class CachingServer(FlakyServer):
    """Says 800 of a 1,000-token prompt came from its cache, as OpenAI's usage does."""

    def respond(self, path, body, headers):
        status, extra, data = super().respond(path, body, headers)
        data["usage"] |= {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 800}}
        return status, extra, data


def test_cached_prompt_tokens_are_priced_as_cached():
    prices = {"served-model": {"input": 1.0, "output": 4.0, "cached_input": 0.1}}
    with CachingServer() as url:
        out = teacher(url, prices=prices).generate(reqs()[:1])[0]
    assert out.cost == pytest.approx((200 * 1.0 + 800 * 0.1 + 6 * 4.0) / 1e6)  # was every prompt token at 1.0


class ChoosingServer(FlakyServer):
    """Honours structured_outputs' choice when `honours`, else answers as if the field were not there (as a
    server that drops fields it does not know does)."""

    honours = True

    def respond(self, path, body, headers):
        status, extra, data = super().respond(path, body, headers)
        forced = (body.get("structured_outputs") or {}).get("choice")
        if forced and self.honours:
            for c in data["choices"]:
                c["text"] = forced[0]
        return status, extra, data


def test_a_server_that_drops_constraints_is_found_out_before_the_run():
    grammar = Sampling(constraint={"regex": "[a-z]+"})
    with ChoosingServer() as url:
        teacher(url).check(grammar)  # enforced: the probe answered "yes"
    server = ChoosingServer()
    server.honours = False
    with server as url, pytest.raises(SkdError, match="ignores structured_outputs"):
        teacher(url).check(grammar)
