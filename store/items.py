"""The one item shape, and the SQL that normalises, identifies and validates items.

Identity lives in SQL so that every path (file ingest, staging shards, labels) computes the same
`item_id` at DuckDB speed: a hash of the kind and the normalised content fields (Unicode NFC,
whitespace collapsed, case folded). Re-ingesting is idempotent and exact duplicates collapse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .db import Store

KINDS = ("triple", "qa", "rationale", "text")
FORMATS = ("jsonl", "csv", "parquet", "atomic2020")  # item files `skd ingest` reads
LABEL_FORMATS = ("ckbp", "rationale-acceptability", "atomic2020", "jsonl")  # label files `skd labels import` reads
TEXT_FIELDS = ("head", "relation", "tail", "question", "answer", "rationale", "text", "domain")
# Input fields that skd computes itself, so ingest ignores them.
IGNORED_INPUT_FIELDS = {"item_id", "created_at"}
ID_FIELDS = ("head", "relation", "tail", "question", "answer", "rationale", "text")
# The one item column list: the columns of `items` that hold an item, in table order (item_id and
# created_at are computed). The subsets below are derived from it, so a new column is added here once.
ITEM_COLUMNS = ("kind", "head", "relation", "tail", "question", "answer", "choices", "rationale", "text", "domain",
                "extra")
# What a critic reads of an item (its verbaliser's inputs: kind and the identity fields), with its id.
SCORED_COLUMNS = ("item_id", *(c for c in ITEM_COLUMNS if c == "kind" or c in ID_FIELDS))
# What a critic that also reads the teacher's likelihood gets besides (critics.stack).
TEACHER_NLL = "teacher_nll"
# What a critic that weighs agreement among the teacher's samples gets besides (critics.agreement): the other items
# of the same prompt, as what each of them says (the SAID field of its kind).
SIBLINGS = "siblings"
# What an item of each kind says, for comparing it with its siblings or with human-written knowledge (the rest is
# the prompt they share). Free text has none.
SAID = {"triple": "tail", "rationale": "rationale", "qa": "answer"}


def teacher_nll_sql(alias: str) -> str:
    """The teacher's per-token negative log-likelihood of the row aliased ALIAS (an item or a label), as SQL: an
    `nll` its importer recorded in `extra` (the rationale-acceptability file carries GPT-3's), else its generation's
    -logprob / n_tokens (recorded with `logprobs = true`; where a completion held several items, each gets the whole
    completion's, and an item generated more than once its likeliest). NULL where neither is known."""
    return (f"coalesce(try_cast({alias}.extra->>'nll' AS DOUBLE), (SELECT min(-g.logprob / g.n_tokens) "
            "FROM item_sources s JOIN generations g ON g.request_id = s.request_id AND g.sample_index = s.sample_index "
            f"WHERE s.item_id = {alias}.item_id AND g.logprob IS NOT NULL AND g.n_tokens > 0))")


def said_sql(alias: str) -> str:
    """What an item says (SAID), as SQL; NULL for free text, which has no siblings."""
    return f"CASE {alias}.kind {' '.join(f'WHEN {k!r} THEN {alias}.{f}' for k, f in SAID.items())} END"


def sibling_key_sql(alias: str) -> str:
    """The prompt an item answers: a triple's head and relation, a question (case folded, as in `item_id`). Items
    with the same key are siblings."""
    return f"CASE {alias}.kind WHEN 'triple' THEN lower({alias}.head) || chr(0) || {alias}.relation " \
           f"WHEN 'rationale' THEN lower({alias}.question) WHEN 'qa' THEN lower({alias}.question) END"


def sibling_key(row: dict[str, Any]) -> str | None:
    """The prompt a row read into Python (a label or an item) answers, as siblings are found in SQL: its kind and
    sibling_key_sql's key. None for free text. critics.metrics.selection compares the scores of one prompt's outputs.
    Python's lower() and DuckDB's differ on a few letters (a dotted capital I, a final sigma): prompts spelt with
    them may be grouped a little differently here than in SQL."""
    kind = row.get("kind")
    if kind == "triple" and row.get("head") is not None and row.get("relation") is not None:
        return f"triple\0{row['head'].lower()}\0{row['relation']}"
    if kind in ("rationale", "qa") and row.get("question") is not None:
        return f"{kind}\0{row['question'].lower()}"
    return None


SIBLING_FIELDS = "item_id, kind, head, relation, tail, question, answer, rationale"


def siblings_sql(alias: str, labels: bool = False) -> str:
    """The row aliased ALIAS's siblings, as the list of what each says (distinct, in order, none NULL); NULL where
    it has none. Siblings are what a teacher overgenerates for one prompt: several tails for one head and relation,
    several rationales for one question. They are looked for among the items, and for a label (LABELS) among the
    labels too: a label of an item sees the same siblings as the item does when it is scored, and an imported label
    (not an item) sees the other labels of its prompt. Equality on the key keeps this a hash join."""
    pool = f"(SELECT {SIBLING_FIELDS} FROM items UNION ALL SELECT {SIBLING_FIELDS} FROM labels)" if labels else "items"
    return (f"(SELECT list(DISTINCT {said_sql('o')} ORDER BY {said_sql('o')}) FILTER (WHERE {said_sql('o')} IS NOT "
            f"NULL) FROM {pool} o WHERE o.kind = {alias}.kind AND {sibling_key_sql('o')} = {sibling_key_sql(alias)} "
            f"AND o.item_id <> {alias}.item_id)")


# What the embedder reads: a triple's tail, else the verbalisation, so the same inputs as a critic's.
EMBEDDED_COLUMNS = SCORED_COLUMNS
# What an export holds of each item: everything but `extra`, which the export casts to JSON text itself.
EXPORTED_COLUMNS = ("item_id", *(c for c in ITEM_COLUMNS if c != "extra"))
SCOPES = ("global", "head", "head-relation", "head-tail")  # within what dedup looks for duplicates
REQUIRED = {
    "triple": ("head", "relation", "tail"),
    "qa": ("question", "answer"),
    "rationale": ("question", "answer", "rationale"),
    "text": ("text",),
}

# DuckDB string literals take no backslash escapes: spell the whitespace set with chr().
WS = "(' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13))"


def item_id_sql(prefix: str = "") -> str:
    """SQL for the item id of a row of cleaned fields (see `clean_sql`); `prefix` qualifies columns.

    The content is concatenated once and normalised once (NFC, lower case, runs of whitespace to one
    space): per-field normalisation cost 3x more. The regex runs only where `contains` finds a run of
    whitespace or a tab/newline, which is rare and cheaper to test for than with a regex.
    """
    parts = [f"coalesce({prefix}{f}, '')" for f in ("kind", *ID_FIELDS)]
    parts.append(f"coalesce(array_to_string({prefix}choices, chr(30)), '')")
    joined = f"lower(nfc_normalize(concat_ws(chr(31), {', '.join(parts)})))"
    return f"substr(md5({normalise_ws_sql(joined)}), 1, 16)"


def normalise_ws_sql(expr: str) -> str:
    """`expr` with runs of whitespace collapsed to one space (RE2's \\s: space, \\t, \\n, \\f, \\r)."""
    suspects = " OR ".join([f"contains({expr}, '  ')"] + [f"contains({expr}, chr({c}))" for c in (9, 10, 12, 13)])
    return f"CASE WHEN {suspects} THEN regexp_replace({expr}, '\\s+', ' ', 'g') ELSE {expr} END"


def clean_sql(col: str) -> str:
    """Stored form of a text field: trimmed of whitespace, blank becomes NULL. Most values need no
    trimming, and comparing their first and last characters is five times cheaper than `trim`."""
    return f"CASE WHEN {col}[1] > ' ' AND {col}[-1] > ' ' THEN {col} ELSE nullif(trim({col}, {WS}), '') END"


def infer_kind_sql(default: str | None) -> str:
    d = f"'{default}'" if default else "NULL"
    return (
        f"coalesce(nullif(trim(kind), ''), {d}, CASE "
        "WHEN head IS NOT NULL OR relation IS NOT NULL OR tail IS NOT NULL THEN 'triple' "
        "WHEN rationale IS NOT NULL THEN 'rationale' "
        "WHEN question IS NOT NULL THEN 'qa' "
        "WHEN text IS NOT NULL THEN 'text' END)"
    )


def reject_reason_sql() -> str:
    """NULL for a valid row, else why it is rejected. Applied after cleaning and kind inference."""
    kinds = ", ".join(f"'{k}'" for k in KINDS)
    cases = [
        "WHEN kind IS NULL THEN 'cannot tell the kind: no head/relation/tail, question or text field'",
        f"WHEN kind NOT IN ({kinds}) THEN 'unknown kind ' || kind || ' (expected one of {', '.join(KINDS)})'",
    ]
    for kind, fields in REQUIRED.items():
        missing = " OR ".join(f"{f} IS NULL" for f in fields)
        cases.append(f"WHEN kind = '{kind}' AND ({missing}) THEN '{kind} needs {', '.join(fields)}'")
    return "CASE " + " ".join(cases) + " END"


# -- normalised forms (dedup, statistics, snapshot splits) ---------------------------------------------
# The generated part of an item (columns qualified by the alias `i`). A text item's is its text even when it
# names a tail: a comparative's tail is its second entity, and its statistics were the entities' names.
CONTENT_SQL = ("CASE WHEN i.kind = 'text' AND i.text IS NOT NULL THEN i.text "
               "ELSE coalesce(i.tail, i.rationale, i.answer, i.text, '') END")


def exact_norm_sql(col: str) -> str:
    """Case, PersonX/Person X spelling, punctuation, articles and whitespace do not make items distinct.
    DuckDB's regular expressions (RE2) read `\\w` and `\\b` as ASCII only, so letters are named by their
    Unicode class (`[^\\w]` made "Привет" and "日本" empty, one key for every such item), and an article is a
    word between spaces (the spaces doubled first, so each match leaves the next word its own)."""
    x = f"lower(nfc_normalize(coalesce({col}, '')))"
    x = f"regexp_replace({x}, 'person\\s*([xyz])\\b', 'person\\1', 'g')"
    x = f"regexp_replace({x}, '[^\\p{{L}}\\p{{N}}\\p{{M}}_\\s]', ' ', 'g')"
    x = f"regexp_replace(regexp_replace({x}, '\\s+', '  ', 'g'), '(^|\\s)(a|an|the)(\\s|$)', ' ', 'g')"
    return f"trim(regexp_replace({x}, '\\s+', ' ', 'g'))"


def scope_sql(scope: str) -> str:
    """The key items must share to be duplicates of each other under a dedup scope; never items of two kinds (a
    question's answer and its explanation were one semantic duplicate under `head` when their texts were close)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown dedup scope {scope!r}")
    if scope == "global":
        return "kind"
    head = f"kind || chr(31) || {exact_norm_sql('head')} || {exact_norm_sql('question')}"
    if scope == "head-tail":  # a pair of entities (comparatives): duplicates within the pair
        return f"{head} || chr(31) || {exact_norm_sql('tail')}"
    return head if scope == "head" else f"{head} || chr(31) || coalesce(relation, '')"


class Items:
    """Reads of items by typed filters (a user's own --where goes through `where_sql` elsewhere)."""

    ORDERS = {"item_id": "item_id", "arrival": "created_at, item_id"}

    def __init__(self, store: Store):
        self.store = store

    def select(self, *, item_ids: list[str] | None = None, kind: str | None = None, role: str | None = None,
               order: str = "item_id", columns: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Items (every column, or those named) matching all the filters given: these ids, this kind, this
        `extra.role` (how a recipe tags what a stage generated); by item_id, or in the order they came in."""
        cols = ("item_id", *ITEM_COLUMNS, "created_at")
        if columns is not None and not set(columns) <= set(cols):
            raise ValueError(f"items have no column {', '.join(sorted(set(columns) - set(cols)))}")
        conds, params = ["TRUE"], []
        if item_ids is not None:
            conds.append("list_contains(?::VARCHAR[], item_id)")
            params.append(item_ids)
        if kind is not None:
            conds.append("kind = ?")
            params.append(kind)
        if role is not None:
            conds.append("json_extract_string(extra, '$.role') = ?")
            params.append(role)
        return self.store.query(f"SELECT {', '.join(columns or ('*',))} FROM items WHERE {' AND '.join(conds)} "
                                f"ORDER BY {self.ORDERS[order]}", params).to_dicts()

    def outputs_of(self, request_ids: list[str], field: str = "tail") -> list[str]:
        """FIELD of every item these requests produced, once per completion that produced it (so repeats
        count: the measure of a generator's diversity), in request and sample order."""
        if field not in ITEM_COLUMNS:
            raise ValueError(f"items have no column {field}")
        rows = self.store.con.execute(
            f"SELECT i.{field} FROM (SELECT DISTINCT item_id, request_id, sample_index FROM item_sources "
            "WHERE list_contains(?::VARCHAR[], request_id)) src JOIN items i USING (item_id) "
            f"WHERE i.{field} IS NOT NULL ORDER BY src.request_id, src.sample_index, i.item_id",
            [request_ids]).fetchall()
        return [r[0] for r in rows]

    def new_in_run(self, run_id: str) -> int:
        """Items this run was the first to produce."""
        return int(self.store.scalar("""
            SELECT count(DISTINCT item_id) FROM item_sources s WHERE run_id = ? AND NOT EXISTS (
                SELECT 1 FROM item_sources o WHERE o.item_id = s.item_id AND o.run_id IS DISTINCT FROM s.run_id
                  AND o.created_at <= s.created_at)""", [run_id]))
