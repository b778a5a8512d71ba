"""The one item shape, and the SQL that normalises, identifies and validates items.

Identity lives in SQL so that every path (file ingest, staging shards, labels) computes the same
`item_id` at DuckDB speed: a hash of the kind and the normalised content fields (Unicode NFC,
whitespace collapsed, case folded). Re-ingesting is idempotent and exact duplicates collapse.
"""

from __future__ import annotations

KINDS = ("triple", "qa", "rationale", "text")
FORMATS = ("jsonl", "csv", "parquet", "atomic2020")  # item files `skd ingest` reads
LABEL_FORMATS = ("ckbp", "rationale-acceptability", "jsonl")  # label files `skd labels import` reads
TEXT_FIELDS = ("head", "relation", "tail", "question", "answer", "rationale", "text", "domain")
# Input fields that skd computes itself, so ingest ignores them.
IGNORED_INPUT_FIELDS = {"item_id", "created_at"}
# What a critic reads of an item (its verbaliser's inputs), with its id.
SCORED_COLUMNS = ("item_id", "kind", "head", "relation", "tail", "question", "answer", "rationale", "text")
# Columns of `items`, in table order (item_id and created_at are computed).
ITEM_COLUMNS = ("kind", *TEXT_FIELDS[:6], "choices", "text", "domain", "extra")
ID_FIELDS = ("head", "relation", "tail", "question", "answer", "rationale", "text")
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
