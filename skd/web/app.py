"""`skd serve`: browse, query, compare and annotate a corpus in a browser. A FastAPI app rendered on the server
(Jinja2 templates, autoescaped), its own CSS and script, no build step and no CDN.

The corpus is opened for each request and closed after it, never held: a long `skd generate` ingesting its
shards, or `skd dedup`, is not kept waiting by a browser tab. While such a job holds the file, a page says so
(503, the holder named) and reloads itself; judgements typed meanwhile wait in the browser and are sent again
until they are stored (each carries an id, so a judgement sent twice is stored once).

Safety: every page is read-only except POST /api/judgements, which must carry the session token in a header (a
page of another site can neither read the token nor send the header). Bound to any address but loopback, every
request needs the token too (once as ?token=, then an HttpOnly cookie), and the request log is off so the token
is never written anywhere. The Content-Security-Policy allows no script or style but skd's own.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError

# Imported once when the server starts, not inside the handlers: a first import of `corpus` (the embedding stack
# behind it) costs ~0.4 s, which the first person to open a diff would otherwise wait for.
from corpus.snapshot import diff_snapshots
from store import LockedError, SkdError, Store
from store import judgements as jm
from store.browse import ORIGINS, SORTS, Browse, ItemFilter
from store.user_sql import run_user_sql
from train.evaluate import compare, flat_metrics, stored_eval

from . import charts, views

HERE = Path(__file__).parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WAIT = 2.0  # seconds a request waits for a corpus another process holds, before the page says it is busy
SQL_SECONDS = 10.0  # a SQL box query running longer is stopped: it holds the file from every writer meanwhile
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class Busy(Exception):
    def __init__(self, message: str):
        self.message = message


class Judgement(BaseModel):
    item_id: str
    label: Literal[0, 1] | None
    client_id: str = ""
    typed_at: int | None = None  # ms on the browser's clock


class Typed(BaseModel):
    """A batch of judgements sent by the annotation page (a malformed one is refused whole, with 422)."""
    annotator: str
    sample: str = ""
    judgements: list[Judgement]


class Corpus:
    """Short connections to the corpus, one at a time within this process (DuckDB refuses a read-only and a
    read-write connection to one file in one process)."""

    def __init__(self, path: Path, source: str):
        self.path, self.source = Path(path), source
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, ...], Any]] = {}

    def cached(self, key: str, compute):
        """COMPUTE's result, computed again only once the corpus file (or its write-ahead log) has changed: the
        counts and facets of a million items cost a few scans, and most page views change nothing."""
        state = tuple(p.stat().st_mtime_ns if p.exists() else 0
                      for p in (self.path, self.path.with_name(self.path.name + ".wal")))
        hit = self._cache.get(key)
        if hit is None or hit[0] != state:
            hit = self._cache[key] = (state, compute())
        return hit[1]

    @contextmanager
    def open(self, write: bool = False) -> Iterator[Store]:
        with self._turn():
            try:
                s = Store(self.path, read_only=not write, wait=WAIT)
            except LockedError as e:
                raise Busy(str(e).split(";")[0]) from None
            try:
                yield s
            finally:
                s.close()

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn at the corpus; a request that waits longer than WAIT is answered busy, so requests
        do not pile up behind a job that holds the file."""
        if not self._lock.acquire(timeout=WAIT):
            raise Busy("other requests of this server are waiting for it")
        try:
            yield
        finally:
            self._lock.release()

    def sql(self, q: str):
        """A user's SQL on the guarded read-only connection (`skd query`'s), at most SQL_ROWS rows of it."""
        with self._turn():
            try:
                # one row more than shown: the page says whether there were more
                return run_user_sql(self.path, q, wait=WAIT, limit=views.SQL_ROWS + 1, timeout=SQL_SECONDS)
            except LockedError as e:
                raise Busy(str(e).split(";")[0]) from None


def create_app(db: Path, token: str, *, public: bool = False, source: str = jm.SOURCE) -> FastAPI:
    """The web app over the corpus at DB. TOKEN guards writes (and, when PUBLIC, every request)."""
    with Store(db, read_only=True, wait=WAIT) as s:  # one line now if there is no corpus (or it is held), not per page
        jm.check_annotation_source(s, source)
    corpus = Corpus(db, source)
    app = FastAPI(title="skd", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    # the browser queues judgements per corpus, not per address: another corpus served on the same port later
    # must not receive (or silently drop) what was typed for this one
    corpus_id = hashlib.sha256(str(Path(db).resolve()).encode()).hexdigest()[:16]
    templates.env.globals |= {"charts": charts, "fmt": views.fmt, "content": views.content, "token": token,
                              "corpus_id": corpus_id}
    templates.env.filters["pretty"] = views.pretty
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if not public and (request.url.hostname or "") not in LOOPBACK:  # a DNS-rebinding page has another host
            return Response("skd serve answers on 127.0.0.1 only", status_code=421)
        if public and not request.url.path.startswith("/static/"):
            given = request.query_params.get("token")
            if given is not None and same(given, token):
                r = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
                r.set_cookie("skd_token", token, httponly=True, samesite="strict")
                return r
            if not same(request.cookies.get("skd_token", ""), token):
                return Response("open the address with the token that `skd serve` printed", status_code=401)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(Busy)
    async def busy(request: Request, e: Busy):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": f"the corpus is busy: {e.message}"}, status_code=503)
        return page(request, "error.html", 503, title="corpus busy", message=f"The corpus is busy: {e.message}. "
                    "This page reloads in a few seconds.", refresh=True)

    @app.exception_handler(SkdError)
    async def user_error(request: Request, e: SkdError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(e)}, status_code=400)
        return page(request, "error.html", 400, title="error", message=str(e))

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request):
        with corpus.open() as s:
            b = Browse(s)
            snaps = corpus.cached("snapshots", s.snapshots.all)
            latest = s.snapshots.get(snaps[-1]["name"]) if snaps else None
            return page(request, "overview.html", counts=corpus.cached("overview", b.overview),
                        facets=corpus.cached("facets", b.facets), runs=b.generation_runs(),
                        snapshots=snaps, latest=latest)

    @app.get("/items", response_class=HTMLResponse)
    def items(request: Request):
        f = parse_filter(dict(request.query_params))
        with corpus.open() as s:
            b = Browse(s)
            critics = b.critics()
            if not f.critic and critics:
                f = f.model_copy(update={"critic": critics[0]["critic_id"]})
            rows, total = b.items(f)
            return page(request, "items.html", f=f, rows=rows, total=total, facets=corpus.cached("facets", b.facets),
                        critics=critics,
                        snapshots=corpus.cached("snapshots", s.snapshots.all), sorts=list(SORTS), origins=ORIGINS,
                        query=lambda **kw: views.query(f, **kw))

    @app.get("/items/{item_id}", response_class=HTMLResponse)
    def item(request: Request, item_id: str):
        with corpus.open() as s:
            found = Browse(s).item(item_id)
        if found is None:
            raise HTTPException(404, f"no item {item_id}")
        return page(request, "item.html", **found)

    @app.get("/snapshots", response_class=HTMLResponse)
    def snapshots(request: Request):
        with corpus.open() as s:
            return page(request, "snapshots.html", snapshots=corpus.cached("snapshots", s.snapshots.all))

    @app.get("/snapshots/{name}", response_class=HTMLResponse)
    def snapshot(request: Request, name: str):
        with corpus.open() as s:
            return page(request, "snapshot.html", **views.snapshot_context(s, name))

    @app.get("/diff", response_class=HTMLResponse)
    def diff(request: Request, a: str = "", b: str = ""):
        with corpus.open() as s:
            names = [r["name"] for r in corpus.cached("snapshots", s.snapshots.all)]
            # snapshots are immutable: a diff is computed once per pair (again only after the corpus changed)
            d = corpus.cached(f"diff\0{a}\0{b}", lambda: views.diff_context(s, diff_snapshots(s, a, b, sample=20))) \
                if a and b else None
        return page(request, "diff.html", names=names, a=a, b=b, d=d)

    @app.get("/evals", response_class=HTMLResponse)
    def evals(request: Request):
        with corpus.open() as s:
            return page(request, "evals.html", rows=compare(s))

    @app.get("/evals/{eval_id}", response_class=HTMLResponse)
    def eval_page(request: Request, eval_id: str):
        with corpus.open() as s:
            r = stored_eval(s, eval_id)
        if r is None:
            raise HTTPException(404, f"no evaluation {eval_id}")
        return page(request, "eval.html", r=r, flat=flat_metrics(r["metrics"]))

    @app.get("/sql", response_class=HTMLResponse)
    def sql(request: Request, q: str = "", t: str = ""):
        result, error = None, None
        if q.strip() and not same(t, token):  # a link from another site fills the box but does not run it
            error = "not run yet: press Run to run this query"
        elif q.strip():
            try:
                result = corpus.sql(q)
            except SkdError as e:
                error = str(e)
        return page(request, "sql.html", q=q, result=result, error=error, limit=views.SQL_ROWS)

    @app.get("/annotate", response_class=HTMLResponse)
    def annotate(request: Request, annotator: str = "", strategy: str = "random", n: int = 50, seed: int = 0,
                 critic: str = ""):
        with corpus.open() as s:
            b = Browse(s)
            critics = b.critics()
            ctx = {"annotator": annotator, "strategy": strategy, "n": max(1, min(n, 1000)), "seed": seed,
                   "critic": critic or (critics[0]["critic_id"] if critics else ""), "critics": critics,
                   "strategies": jm.STRATEGIES, "people": jm.annotators(s), "agreement": jm.agreement(s)}
            if annotator:
                ctx |= views.annotation_context(s, b, jm.check_annotator(annotator), ctx)
        return page(request, "annotate.html", **ctx)

    @app.post("/api/judgements")
    def judgements(request: Request, typed: Typed):
        if not same(request.headers.get("x-skd-token", ""), token):
            return JSONResponse({"error": "missing or wrong token"}, status_code=403)
        with corpus.open(write=True) as s:
            result = jm.record(s, typed.annotator, [j.model_dump() for j in typed.judgements], source=corpus.source,
                               sample=typed.sample)
            # the page's annotator and agreement tables, as they stand now (the page redraws them)
            people = [p | {"last": str(p["last"])} for p in jm.annotators(s)]
            return result | {"people": people, "agreement": jm.agreement(s)}

    return app


def same(given: str, token: str) -> bool:
    """A constant-time comparison that any string can be given to (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode(), token.encode())


def parse_filter(params: dict[str, str]) -> ItemFilter:
    """The items page's query string as a filter; empty fields are no filter, a bad value is one line."""
    given = {k: v for k, v in params.items() if v != "" and k in ItemFilter.model_fields}
    try:
        return ItemFilter(**given)
    except ValidationError as e:
        err = e.errors()[0]
        where = f" {err['loc'][0]}" if err["loc"] else ""
        raise SkdError(f"filter{where}: {err['msg'].removeprefix('Value error, ')}") from None
