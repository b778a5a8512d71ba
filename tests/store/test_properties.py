"""Ingest never raises on arbitrary rows and never loses one: every row is stored or rejected."""

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import Store, ingest_file
from tests.conftest import EXAMPLES, both_ways

FIELDS = ["kind", "head", "relation", "tail", "question", "answer", "rationale", "text", "domain", "choices",
          "extra", "item_id", "junk"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                    st.sampled_from(["triple", "qa", "rationale", "text", "", "  "]))
values = st.recursive(scalars, lambda v: st.one_of(st.lists(v, max_size=3), st.dictionaries(st.text(max_size=5), v,
                                                                                            max_size=3)), max_leaves=6)
record = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
# Hostile lines from an outside test: invalid UTF-8, lone surrogate escapes, lists and objects nested deep.
hostile = st.one_of(
    st.binary(min_size=1, max_size=8).map(lambda b: b'{"text": "x' + b.replace(b"\n", b"").replace(b'"', b"")
                                          + b'\xff"}'),
    st.sampled_from([b'{"text": "lone \\ud800 here"}', b'{"tail": "\\udfff", "head": "h", "relation": "r"}',
                     b'{"text": "a pair \\ud83d\\ude00 is fine"}']),
    st.integers(20, 3000).map(lambda n: b'{"text": "deep", "x": ' + b"[" * n + b"]" * n + b"}"),
    st.integers(20, 1500).map(lambda n: b'{"text": "deep", "x": ' + b'{"a": ' * n + b"1" + b"}" * n + b"}"),
)
line = st.one_of(record.map(lambda r: json.dumps(r).encode()),
                 st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=40).map(
                     lambda t: t.encode("utf-8", errors="surrogatepass")),
                 hostile)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, min_size=1, max_size=25))
def test_random_jsonl_rows_are_stored_or_rejected_never_lost(lines):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        with Store(Path(d) / "c.duckdb") as s:
            ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
            before = s.query("SELECT * FROM items ORDER BY item_id")
            r = ingest_file(s, path, "jsonl")
            nonblank = [i + 1 for i, x in enumerate(lines) if not _blank_text(x)]
            stored = set(s.query(f"SELECT row_number FROM item_sources WHERE run_id = '{r.run_id}'")["row_number"])
            rejected = set(s.query(f"SELECT row_number FROM rejects WHERE run_id = '{r.run_id}'")["row_number"])
            assert stored | rejected == set(nonblank) and not stored & rejected
            assert r.accepted + r.rejected == len(nonblank)
            after = s.query("SELECT * FROM items ORDER BY item_id")
            assert after.join(before, on="item_id", how="semi").equals(before)  # nothing stored was changed
            assert s.scalar("SELECT count(*) FROM items") == before.height + r.new_items


def _blank_text(line: bytes) -> bool:
    """A line the reader skips as blank (whitespace only, as str.strip() sees it)."""
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


# Records of every kind with text fields, as the JSONL fast path (pyarrow) takes them, and some it must hand
# back to the Python reader (an unknown field absent from some rows): either way, stored exactly alike.
words = st.text(alphabet=st.sampled_from(list("aAbB éÉ\t\u00a0x?")), max_size=8)
extra_fields = {"note": words, "n": st.integers(-5, 5), "tags": st.lists(st.sampled_from(["p", "q"]), max_size=2)}
text_record = st.one_of(
    st.fixed_dictionaries({"head": words, "relation": st.sampled_from(["xWant", " xAttr"]), "tail": words},
                          optional={"kind": st.sampled_from(["triple", "qa"])}),
    st.fixed_dictionaries({"question": words, "answer": words},
                          optional={"choices": st.lists(words, max_size=3), "kind": st.just("qa")}),
    st.fixed_dictionaries({"text": words}, optional={"kind": st.sampled_from(["text", "poem"]), "head": st.none(),
                                                      "domain": words}))


@st.composite
def jsonl_files(draw) -> list[str]:
    """Lines of records that share their unknown fields (the fast path's case) or, in some files, do not."""
    names = draw(st.lists(st.sampled_from(sorted(extra_fields)), unique=True, max_size=2))
    ragged = draw(st.booleans())
    lines = []
    for _ in range(draw(st.integers(1, 20))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["", "  "])))
            continue
        rec = draw(text_record)
        rec.update({n: draw(extra_fields[n]) for n in names if not ragged or draw(st.booleans())})
        lines.append(json.dumps(rec))
    return lines


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jsonl_files())
def test_jsonl_fast_path_stores_what_the_python_reader_stores(lines):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8")
        both_ways(path, "jsonl", Path(d))


csv_values = st.text(alphabet=st.sampled_from(list('aB é,"\n\t\u00a0\x1cx')), max_size=6)
CSV_HEADER = ["head", " relation", "tail", "question", "answer", "text", "kind", "note"]


@st.composite
def csv_files(draw) -> str:
    """CSV text: quoted commas, quotes and newlines, blank rows, sometimes a short row or a blank line."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for _ in range(draw(st.integers(1, 15))):
        row = [draw(csv_values) for _ in CSV_HEADER]
        row[6] = draw(st.sampled_from(["", "triple", "qa", "text", "poem"]))
        row[1] = draw(st.sampled_from(["", "xWant", " xAttr "]))
        writer.writerow(row)
        if draw(st.integers(0, 5)) == 0:
            out.write(draw(st.sampled_from(["\n", "\n", "a,b\n", ",,,,,,,\n", " , ,\t, , , , , \n"])))
    return out.getvalue() + draw(st.sampled_from(["", "\n", "\n\n"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_files())
def test_csv_fast_path_stores_what_the_python_reader_stores(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.csv"
        path.write_text(text, encoding="utf-8", newline="")
        both_ways(path, "csv", Path(d))
