"""Ingest never raises on arbitrary rows and never loses one: every row is stored or rejected."""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import Store, ingest_file
from tests.conftest import EXAMPLES

FIELDS = ["kind", "head", "relation", "tail", "question", "answer", "rationale", "text", "domain", "choices",
          "extra", "item_id", "junk"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                    st.sampled_from(["triple", "qa", "rationale", "text", "", "  "]))
values = st.recursive(scalars, lambda v: st.one_of(st.lists(v, max_size=3), st.dictionaries(st.text(max_size=5), v,
                                                                                            max_size=3)), max_leaves=6)
record = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
line = st.one_of(record.map(lambda r: json.dumps(r)),
                 st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=40))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, min_size=1, max_size=25))
def test_random_jsonl_rows_are_stored_or_rejected_never_lost(lines):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        with Store(Path(d) / "c.duckdb") as s:
            ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
            before = s.query("SELECT * FROM items ORDER BY item_id")
            r = ingest_file(s, path, "jsonl")
            nonblank = [i + 1 for i, x in enumerate(lines) if x.strip()]
            stored = set(s.query(f"SELECT row_number FROM item_sources WHERE run_id = '{r.run_id}'")["row_number"])
            rejected = set(s.query(f"SELECT row_number FROM rejects WHERE run_id = '{r.run_id}'")["row_number"])
            assert stored | rejected == set(nonblank) and not stored & rejected
            assert r.accepted + r.rejected == len(nonblank)
            after = s.query("SELECT * FROM items ORDER BY item_id")
            assert after.join(before, on="item_id", how="semi").equals(before)  # nothing stored was changed
            assert s.scalar("SELECT count(*) FROM items") == before.height + r.new_items
