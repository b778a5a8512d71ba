"""`skd serve` and `skd report` as a person uses them: a real corpus (ingested and generated items, a trained
critic, embeddings, dedup clusters, two snapshots), the real server on a free port, and Debian's chromium driven
by selenium. Every page's screenshot is kept under the test's temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from store import SkdError, Store, import_labels, ingest_file
from tests.conftest import EXAMPLES, ROOT, run_skd, shared_file

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
HOSTILE = '<script>document.title="owned"</script> "quoted" & \'single\' <b>bold</b>'
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Ingested triples (one holding markup and quotes), SmolLM2-generated ones, a critic trained on CKBP crowd
    labels that scored them all, MiniLM embeddings, semantic dedup and two snapshots."""
    labels = shared_file("ckbp/ckbp1_crowd.csv")
    d = tmp_path_factory.mktemp("serve")
    db = d / "c.duckdb"
    rows = labels.read_text().splitlines()
    small = d / "labels.csv"
    small.write_text("\n".join(rows[:601]) + "\n")
    header = rows[0].split(",")
    items = d / "items.jsonl"
    with items.open("w") as f:
        for line in rows[1:61]:
            rec = dict(zip(header, line.split(","), strict=False))
            f.write(json.dumps({"head": rec["head"], "relation": rec["relation"], "tail": rec["tail"]}) + "\n")
        f.write(json.dumps({"head": "PersonX reads " + HOSTILE, "relation": "xWant", "tail": "to " + HOSTILE}) + "\n")
    with Store(db) as s:
        ingest_file(s, items, "jsonl")
        import_labels(s, small, "ckbp")
    cfg = d / "gen.toml"
    cfg.write_text('prompts = 2\nmax_events = 2\nrelations = ["xWant"]\n[event_sampling]\nmax_tokens = 48\n'
                   'temperature = 0.7\n[inference_sampling]\nn = 2\nmax_tokens = 8\nstop = ["\\n"]\n')
    run_skd("generate", "atomic10x", "--config", str(cfg), "--quiet", db=db, check=True, timeout=600)
    run_skd("critic", "train", "emb", "--mode", "embedding", "--out", str(d / "emb"), db=db, check=True)
    run_skd("critic", "score", "emb", db=db, check=True)
    run_skd("embed", db=db, check=True)
    run_skd("dedup", "--threshold", "0.8", db=db, check=True)
    run_skd("snapshot", "create", "small", "--relations", "xWant", db=db, check=True, timeout=600)
    run_skd("snapshot", "create", "all", db=db, check=True, timeout=600)
    return db


@pytest.fixture(scope="module")
def server(corpus):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "skd", "serve", "--db", str(corpus), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(url, proc)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def wait_for(url: str, proc: subprocess.Popen, path: str = "/") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"skd serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + path, timeout=2).status_code in (200, 401):
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("skd serve did not answer")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium must not try to download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


def shot(driver, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / f"{name}.png"))


def scripts(driver) -> list[str]:
    return [e.get_attribute("src") or "inline" for e in driver.find_elements("tag name", "script")]


def until(check, timeout: float = 20.0):
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except StaleElementReferenceException:  # the page swapped the element between finding and reading it
            got = None
        except WebDriverException as e:  # the same race, as Chromium sometimes reports it (seen in CI)
            if "does not belong to the document" not in str(e):
                raise
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def judgements_of(db: Path, who: str) -> list[tuple]:
    with Store(db, read_only=True, wait=10) as s:
        return s.con.execute("SELECT j.label, l.label, l.votes_total FROM judgements j LEFT JOIN labels l ON "
                             "l.item_id = j.item_id AND l.source = 'annotation' WHERE annotator = ? "
                             "ORDER BY j.typed_at", [who]).fetchall()


def test_browse_filter_lineage_annotate_diff_report(corpus, server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    b = browser
    b.get(server + "/")
    assert "Corpus overview" in b.page_source and b.find_elements(By.CSS_SELECTOR, "svg.chart")
    shot(b, tmp_path, "overview")

    b.get(server + "/items")  # filter by the form, as a person does
    Select(b.find_element(By.NAME, "relation")).select_by_value("xWant")
    b.find_element(By.NAME, "q").send_keys("script")
    b.find_element(By.ID, "apply").click()
    until(lambda: "1 items match" in b.find_element(By.ID, "total").text)
    assert HOSTILE in b.find_element(By.CSS_SELECTOR, "table.items").text  # shown as text, not run as markup
    assert b.title != "owned" and scripts(b) == [server + "/static/app.js"]
    shot(b, tmp_path, "items-filtered")

    b.get(server + "/items?origin=generated&sort=score-desc")
    assert "score-desc" in b.current_url
    b.find_element(By.CSS_SELECTOR, "table.items a").click()
    page = b.find_element(By.TAG_NAME, "main").text
    assert "generated by" in page and "Prompt" in page and "Raw completion" in page and "emb" in page
    assert "Dedup clusters" in page and ("representative" in page or "duplicate" in page)
    shot(b, tmp_path, "item-lineage")

    b.get(server + "/annotate")
    b.find_element(By.ID, "annotator").send_keys("alice")
    b.find_element(By.ID, "start").click()
    until(lambda: b.find_elements(By.CSS_SELECTOR, ".card.current"))
    body = b.find_element(By.TAG_NAME, "body")
    for key in "ars":
        body.send_keys(key)
    assert until(lambda: len(judgements_of(corpus, "alice")) == 3)
    got = judgements_of(corpus, "alice")
    assert [g[0] for g in got] == [1, 0, None] and [g[1] for g in got] == [1, 0, None]
    until(lambda: "3 of 50 judged" in b.find_element(By.ID, "progress").text)
    # the annotators table follows without a reload: alice, 3 judged, 1 accepted, 1 rejected, 1 skipped
    assert until(lambda: "alice 3 1 1 1" in b.find_element(By.ID, "annotators").text)
    shot(b, tmp_path, "annotate")

    # a long job holds the corpus: the judgement waits in the browser, then lands once the job is done
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from store import Store; "
                               "s = Store(sys.argv[1]); print('held', flush=True); time.sleep(6)", str(corpus)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    body.send_keys("a")
    until(lambda: "waiting" in b.find_element(By.ID, "queue").text)
    shot(b, tmp_path, "annotate-busy")
    holder.wait(timeout=30)
    assert until(lambda: len(judgements_of(corpus, "alice")) == 4, timeout=30)
    until(lambda: b.find_element(By.ID, "queue").text == "")

    b.get(server + "/diff")
    Select(b.find_element(By.NAME, "a")).select_by_visible_text("small")
    Select(b.find_element(By.NAME, "b")).select_by_visible_text("all")
    b.find_element(By.ID, "compare").click()
    summary = b.find_element(By.ID, "diff-summary").text
    with Store(corpus, read_only=True, wait=10) as s:
        n_small, n_all = (s.scalar("SELECT count(*) FROM snapshot_items JOIN snapshots USING (snapshot_id) "
                                   "WHERE name = ?", [n]) for n in ("small", "all"))
    assert summary.startswith(f"{n_all - n_small:,} items added, 0 removed")
    shot(b, tmp_path, "diff")

    def run_sql(q: str) -> None:
        box = b.find_element(By.ID, "sql")
        box.clear()
        box.send_keys(q)
        b.find_element(By.ID, "run-sql").click()
        until(lambda: not box_alive(box))  # the answer's page, not the one the click left

    def box_alive(box) -> bool:
        try:
            box.is_enabled()
            return True
        except Exception:  # StaleElementReferenceException: the page was replaced
            return False

    b.get(server + "/sql?q=SELECT count(*) AS n FROM items")  # a link (from any site) fills the box, runs nothing
    assert "press Run" in b.find_element(By.ID, "sql-error").text and not b.find_elements(By.ID, "sql-result")
    run_sql("COPY items TO '/tmp/skd-leak.csv'")
    assert "only reads" in b.find_element(By.ID, "sql-error").text and not Path("/tmp/skd-leak.csv").exists()
    run_sql("SELECT count(*) AS n FROM items")
    assert b.find_element(By.ID, "sql-result").text.split()[-1].replace(",", "").isdigit()

    report = tmp_path / "report.html"
    run_skd("report", "all", "--out", str(report), db=corpus, check=True)
    html = report.read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    b.get(report.as_uri())
    assert "Snapshot all" in b.title or "all" in b.title
    assert b.find_elements(By.CSS_SELECTOR, "svg.chart") and "Funnel" in b.page_source
    shot(b, tmp_path, "report")
    print("screenshots:", tmp_path)


def test_judgements_resent_or_refused_are_stored_once(corpus, server):
    page = httpx.get(server + "/annotate?annotator=bob").text
    token = page.split('name="skd-token" content="')[1].split('"')[0]
    with Store(corpus, read_only=True, wait=10) as s:
        ids = [r[0] for r in s.con.execute("SELECT item_id FROM items ORDER BY item_id LIMIT 2").fetchall()]
    body = {"annotator": "bob", "judgements": [{"item_id": ids[0], "label": 1, "client_id": "x1"},
                                               {"item_id": "no-such-item", "label": 1, "client_id": "x2"}]}
    assert httpx.post(server + "/api/judgements", json=body).status_code == 403  # no token: refused
    r = httpx.post(server + "/api/judgements", json=body, headers={"X-SKD-Token": token})
    counts = {k: r.json()[k] for k in ("saved", "repeated", "unknown", "superseded")}
    assert counts == {"saved": 1, "repeated": 0, "unknown": 1, "superseded": 0}
    assert {"annotator": "bob", "judged": 1, "accepted": 1}.items() <= next(
        p for p in r.json()["people"] if p["annotator"] == "bob").items()  # the page redraws its table from this
    r = httpx.post(server + "/api/judgements", json=body, headers={"X-SKD-Token": token})
    assert r.json()["saved"] == 0 and r.json()["repeated"] == 1  # a resent judgement lands once
    bad = {"annotator": "bob", "judgements": [{"item_id": ids[1], "label": 7}]}
    r = httpx.post(server + "/api/judgements", json=bad, headers={"X-SKD-Token": token})
    assert r.status_code == 422 and "label" in r.text  # malformed: refused whole, nothing stored
    late = {"annotator": "bob", "judgements": [{"item_id": ids[0], "label": 0, "client_id": "x0", "typed_at": 1}]}
    assert httpx.post(server + "/api/judgements", json=late, headers={"X-SKD-Token": token}).json()["saved"] == 0
    assert httpx.get(server + "/", headers={"Host": "evil.example"}).status_code == 421  # DNS rebinding
    odd = httpx.post(server + "/api/judgements", json=body, headers={"X-SKD-Token": "é".encode()})
    assert odd.status_code == 403
    assert httpx.get(server + "/items?split=train").status_code == 400  # a split needs its snapshot


def test_other_addresses_need_the_printed_token(corpus):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "skd", "serve", "--db", str(corpus), "--host", "0.0.0.0",
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, proc)
        assert httpx.get(url + "/items").status_code == 401
        line = proc.stderr.readline()
        token = line.strip().rsplit("token=", 1)[1]
        with httpx.Client(base_url=url, follow_redirects=True) as c:
            r = c.get(f"/?token={token}")
            assert r.status_code == 200 and "token=" not in str(r.url)  # the token leaves the address bar
            assert c.get("/items").status_code == 200  # the cookie carries it
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert token not in err  # printed once, never logged


def test_judgements_never_go_to_a_source_a_label_file_was_imported_into(tmp_path):
    """Typed judgements make their items' labels from typed votes alone: served into an imported source, the first
    accept replaced the file's crowd votes for that item."""
    from skd.web.app import create_app

    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
        import_labels(s, EXAMPLES / "critic-labels.jsonl", "jsonl", source="crowd")
    with pytest.raises(SkdError, match="'crowd' holds labels imported from a file"):
        create_app(db, "token", source="crowd")
    assert create_app(db, "token", source="annotation") is not None


def test_a_port_in_use_and_a_folder_as_report_are_one_line(corpus, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        p = run_skd("serve", "--port", str(held.getsockname()[1]), db=corpus, timeout=60)
    assert p.returncode == 2 and "cannot listen on 127.0.0.1" in p.stderr and p.stderr.count("\n") == 1
    p = run_skd("report", "all", "--out", str(tmp_path), db=corpus)
    assert p.returncode == 2 and "is a folder" in p.stderr and p.stderr.count("\n") == 1
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.tmp"))
