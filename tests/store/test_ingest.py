import json
import unicodedata
from collections import Counter

import polars as pl
import pytest

import store.ingest as ingest_mod
from store import SkdError, Store, ingest_file
from tests.conftest import EXAMPLES, both_ways, shared_file


def norm(s: str) -> str:
    return " ".join(unicodedata.normalize("NFC", s).lower().split())


def test_atomic2020_counts_per_relation(db_path):
    path = shared_file("atomic2020/human_tuples.tsv")
    rows, distinct = Counter(), {}
    for line in path.read_text().splitlines():
        left, _, right = line.partition("\t")
        head, _, rel = left.partition("@@")
        for tail in right.split("|"):
            if tail.strip().lower() not in ("none", ""):
                rows[rel.strip()] += 1
                distinct.setdefault(rel.strip(), set()).add((norm(head), norm(tail)))
    with Store(db_path) as s:
        r = ingest_file(s, path, "atomic2020")
        got = dict(s.con.execute("SELECT relation, count(*) FROM items GROUP BY 1").fetchall())
        src = dict(s.con.execute("SELECT i.relation, count(*) FROM item_sources JOIN items i USING (item_id) "
                                 "GROUP BY 1").fetchall())
    assert r.accepted == sum(rows.values()) and r.rejected == 0
    assert got == {rel: len(v) for rel, v in distinct.items()}
    assert src == dict(rows)
    assert len(got) >= 20 and got["xWant"] > 1000  # relations whose tails are all "none" hold no items


def test_reingest_changes_nothing(db_path):
    path = EXAMPLES / "mini.jsonl"
    with Store(db_path) as s:
        first = ingest_file(s, path, "jsonl")
        before = {t: s.query(f"SELECT * EXCLUDE (created_at) FROM {t} ORDER BY ALL") for t in ("items", "item_sources")}
        again = ingest_file(s, path, "jsonl")
        after = {t: s.query(f"SELECT * EXCLUDE (created_at) FROM {t} ORDER BY ALL") for t in ("items", "item_sources")}
    assert first.new_items == 26 and not first.skipped
    assert again.skipped and again.run_id == first.run_id
    for t in before:
        assert before[t].equals(after[t])


def test_same_item_from_two_files_is_stored_once_with_two_sources(db_path, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"head": "PersonX eats", "relation": "xWant", "tail": "to sleep"}) + "\n")
    # Different case and spacing: the same knowledge, so the same item.
    b.write_text(json.dumps({"head": " personx  EATS", "relation": "xWant", "tail": "to sleep\t"}) + "\n")
    with Store(db_path) as s:
        ingest_file(s, a, "jsonl")
        r = ingest_file(s, b, "jsonl")
        assert r.new_items == 0 and r.accepted == 1
        assert s.scalar("SELECT count(*) FROM items") == 1
        assert s.query("SELECT source FROM item_sources ORDER BY source")["source"].to_list() == [str(a), str(b)]
        assert s.scalar("SELECT head FROM items") == "PersonX eats"  # the first stored form is kept


BAD_JSONL = [
    '{"head": "PersonX runs", "relation": "xEffect", "tail": "gets tired"}',
    '{"head": "PersonX runs", "relation": "xEffect"',  # truncated JSON
    '["not", "an", "object"]',
    '{"question": "Why?", "answer": "because", "rationale": "it is so", "score": 0.5}',
    '{"head": "PersonX runs"}',  # triple without relation/tail
    '{"kind": "poem", "text": "roses"}',
    '{"text": {"nested": "object"}}',
    '',
    '{"answer": "42"}',
    '{"text": "A plain fact.", "domain": "misc", "extra": {"url": "http://x"}}',
]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_with_malformed_lines_keeps_good_rows_and_reports_bad(db_path, tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", BAD_JSONL)
    with Store(db_path) as s:
        r = ingest_file(s, path, "jsonl")
        rejects = s.query("SELECT row_number, reason FROM rejects ORDER BY row_number")
        extra = s.query("SELECT kind, extra FROM items ORDER BY kind")
    assert (r.accepted, r.rejected, r.new_items) == (3, 6, 3)
    assert rejects["row_number"].to_list() == [2, 3, 5, 6, 7, 9]
    reasons = dict(zip(rejects["row_number"], rejects["reason"], strict=True))
    assert reasons[2].startswith("invalid JSON")
    assert "JSON object" in reasons[3]
    assert reasons[5] == "triple needs head, relation, tail"
    assert reasons[6].startswith("unknown kind poem")
    assert "must be text" in reasons[7]
    assert reasons[9].startswith("cannot tell the kind")
    report = [json.loads(x) for x in open(r.report)]
    assert [x["row_number"] for x in report] == [2, 3, 5, 6, 7, 9]
    assert json.loads(extra.filter(pl.col("kind") == "rationale")["extra"][0]) == {"score": 0.5}
    assert json.loads(extra.filter(pl.col("kind") == "text")["extra"][0]) == {"url": "http://x"}


def test_strict_rejects_whole_file_and_keeps_what_was_stored(db_path, tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", BAD_JSONL)
    with Store(db_path) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
        with pytest.raises(SkdError, match=r"row 2: invalid JSON.*nothing ingested"):
            ingest_file(s, path, "jsonl", strict=True)
        assert s.scalar("SELECT count(*) FROM items") == 26
        assert s.scalar("SELECT count(*) FROM runs WHERE stage = 'ingest'") == 1


def test_failure_mid_ingest_rolls_back(db_path, tmp_path, monkeypatch):
    with Store(db_path) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
        before = s.query("SELECT * FROM items ORDER BY item_id")

        def boom(*a, **k):
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(ingest_mod, "record_rejects", boom)
        path = write_lines(tmp_path / "more.jsonl", ['{"text": "new fact one"}', '{"text": "new fact two"}'])
        with pytest.raises(RuntimeError):
            ingest_file(s, path, "jsonl")
        assert s.query("SELECT * FROM items ORDER BY item_id").equals(before)
        assert s.scalar("SELECT count(*) FROM item_sources") == 26
        assert s.scalar("SELECT status FROM runs ORDER BY started_at DESC LIMIT 1") == "failed"
        monkeypatch.undo()
        assert ingest_file(s, path, "jsonl").new_items == 2  # a failed ingest can simply be rerun


def test_kind_option_and_inference(db_path, tmp_path):
    path = write_lines(tmp_path / "k.jsonl", ['{"question": "Q1?", "answer": "A"}', '{"text": "T"}'])
    with Store(db_path) as s:
        r = ingest_file(s, path, "jsonl")
        assert r.per_kind == {"qa": 1, "text": 1}
    with Store(db_path.with_name("b.duckdb")) as s:
        r = ingest_file(s, path, "jsonl", kind="text")
        assert r.per_kind == {"text": 1} and r.rejected == 1  # a question row is not a text item


def test_csv_rows_with_wrong_field_count_are_rejected(db_path, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('head,relation,tail,label\nPersonX sings,xAttr,musical,1\nPersonX sings,xAttr\n'
                    '"PersonX, sings",xReact,"happy, proud",1\n')
    with Store(db_path) as s:
        r = ingest_file(s, path, "csv")
        assert (r.accepted, r.rejected) == (2, 1)
        assert s.scalar("SELECT reason FROM rejects") == "expected 4 fields, found 2"
        assert s.scalar("SELECT tail FROM items WHERE relation = 'xReact'") == "happy, proud"
        assert json.loads(s.scalar("SELECT extra FROM items LIMIT 1")) == {"label": "1"}


def test_parquet_maps_known_columns_and_keeps_unknown_in_extra(db_path, tmp_path):
    path = tmp_path / "p.parquet"
    pl.DataFrame({"question": ["Q?", "R?", None], "answer": ["a", "b", None], "choices": [["a", "b"], None, None],
                  "score": [0.9, 0.1, 0.5]}).write_parquet(path)
    with Store(db_path) as s:
        r = ingest_file(s, path, "parquet")
        assert (r.accepted, r.rejected) == (2, 1)
        df = s.query("SELECT question, choices, extra FROM items ORDER BY question")
    assert df["choices"].to_list() == [["a", "b"], None]
    assert json.loads(df["extra"][0]) == {"score": 0.9}


def test_extra_of_any_type_and_odd_column_names_ingest_as_the_line_reader_reads_them(db_path, tmp_path):
    """A struct `extra` used to become DuckDB's `{'a': 1}` text (not JSON: the whole file failed), an `extra`
    beside unknown columns was dropped, and a `"` in a column name broke the SQL."""
    rows = {"text": ["a", "b", "c"], "extra": [{"src": "x", "n": 1}, {"src": "y", "n": 2}, None],
            'note"s': ["q1", "q2", "q3"]}
    pl.DataFrame(rows).write_parquet(tmp_path / "struct.parquet")
    pl.DataFrame({"text": ["d", "e"], "extra": ['{"k": 1}', "plain note"]}).write_parquet(tmp_path / "text.parquet")
    with Store(db_path) as s:
        for name in ("struct", "text"):
            assert ingest_file(s, tmp_path / f"{name}.parquet", "parquet").accepted in (2, 3)
        got = {t: json.loads(e) for t, e in s.query("SELECT text, extra FROM items").iter_rows()}
    assert got == {"a": {"src": "x", "n": 1, 'note"s': "q1"}, "b": {"src": "y", "n": 2, 'note"s': "q2"},
                   "c": {'note"s': "q3"}, "d": {"k": 1}, "e": {"extra": "plain note"}}


def test_fields_differing_only_in_case_are_read_as_named(db_path, tmp_path):
    path = tmp_path / "case.jsonl"
    path.write_text(json.dumps({"Head": "UPPER", "head": "lower", "relation": "xWant", "tail": "t"}) + "\n")
    with Store(db_path) as s:
        assert ingest_file(s, path, "jsonl").accepted == 1
        head, extra = s.query("SELECT head, extra FROM items").row(0)
    assert head == "lower" and json.loads(extra) == {"Head": "UPPER"}


def test_missing_file_and_bad_parquet_are_clear_errors(db_path, tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with Store(db_path) as s:
        with pytest.raises(SkdError, match="no such file"):
            ingest_file(s, tmp_path / "nope.jsonl", "jsonl")
        with pytest.raises(SkdError, match="cannot read .* as parquet"):
            ingest_file(s, bad, "parquet")
        with pytest.raises(SkdError, match="unknown format"):
            ingest_file(s, bad, "xml")


def test_real_jsonl_takes_the_fast_path_and_stores_what_the_python_reader_stores(tmp_path):
    path = shared_file("gsm8k/train.jsonl")  # answers span lines (escaped newlines), some rows repeat
    assert both_ways(path, "jsonl", tmp_path) is True


@pytest.mark.parametrize(("lines", "fast"), [
    (['{"head": "h", "relation": "xWant", "tail": "t", "score": 0.5, "tags": ["a"]}', "", "  ",
      '{"text": "x", "score": 1, "tags": []}'], True),
    (['{"text": "x", "meta": {"a": 1}}', '{"text": "y", "meta": {"b": 2}}'], False),  # nested keys differ
    (['{"text": "x", "day": "2024-01-02"}'], False),  # pyarrow would read a timestamp
    (['{"text": "x", "note": "n"}', '{"text": "y"}'], False),  # absent in one row
    (['{"question": "q", "answer": 42}'], False),  # a number where text belongs
    (['{"question": "q", "answer": "a", "choices": [{"label": "A", "text": "a"}]}'], False),
    (['{"text": "x", "extra": {"url": "u"}}'], False),
    (['{"text": "x"}', '{"text": "y"'], False),  # a truncated line: reported by the Python reader
    (['{"text": "x"} {"text": "y"}', ""], False),  # two objects on one line: as many lines as records
])
def test_jsonl_fast_path_applies_only_where_it_stores_the_same(tmp_path, lines, fast):
    path = write_lines(tmp_path / "x.jsonl", lines)
    assert both_ways(path, "jsonl", tmp_path) is fast


def test_real_csv_takes_the_fast_path_and_stores_what_the_python_reader_stores(tmp_path):
    path = shared_file("ckbp/ckbp1_crowd.csv")  # head,relation,tail,label: label goes to extra
    assert both_ways(path, "csv", tmp_path) is True


@pytest.mark.parametrize(("text", "fast"), [
    ("\ufeffhead , relation,tail,label\nPersonX sings,xAttr,\"musical,\nloud\",1\n , ,,\n"
     "PersonX sings,xAttr,,0\n\n\n", True),  # BOM, header spaces, a blank row, trailing blank lines
    ("head,relation,tail\na,xWant,b\n\nc,xWant,d\n", False),  # a blank line counts as a row
    ("head,relation,tail\na,xWant\nc,xWant,d\n", False),  # a short row, reported by number
    ("head,relation,tail\na,xWant,b\0\n", False),
    ("text,choices\nx,a;b\n", False),  # choices must be a list: the line reader rejects the row
    ('head,relation,tail\na,xWant,"b\nc,xNeed,d\n', False),  # an unclosed quote: a reject, not 2 rows swallowed
    ('head,relation,tail\na,xWant,"b"c\n', False),  # text after a closing quote: a reject, not "bc"
])
def test_csv_fast_path_applies_only_where_it_stores_the_same(tmp_path, text, fast):
    path = tmp_path / "x.csv"
    path.write_text(text, encoding="utf-8", newline="")
    assert both_ways(path, "csv", tmp_path) is fast


def test_csv_and_jsonl_edge_cases_lose_no_row_without_a_reject(db_path, tmp_path):
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('head,relation,tail\nPersonX eats,xWant,"food\nPersonY runs,xNeed,shoes\n', newline="")
    long_field = tmp_path / "long.csv"  # past csv's default field limit (128 KiB), with a newline inside
    long_field.write_text('head,relation,tail\n\nPersonX eats,xWant,"' + "a" * 200_000 + '\nsecond line"\n',
                          newline="")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\n{"text": "second"}\n\n')
    twice = tmp_path / "twice.csv"
    twice.write_text("head,relation,tail,note,note\na,xWant,b,first,second\n")
    with Store(db_path) as s:
        r = ingest_file(s, unclosed, "csv")
        assert (r.accepted, r.rejected) == (0, 1)
        r = ingest_file(s, long_field, "csv")
        assert (r.accepted, r.rejected) == (1, 0) and s.scalar("SELECT length(tail) FROM items") == 200_012
        assert ingest_file(s, bom, "jsonl").accepted == 2  # the BOM is not part of the first row
        with pytest.raises(SkdError, match="names column 'note' twice"):
            ingest_file(s, twice, "csv")

