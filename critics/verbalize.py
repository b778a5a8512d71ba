"""Items as the text a critic reads: a triple as head + a natural-language phrase for its relation +
tail (the COMET-ATOMIC 2020 phrasings); a rationale as question + answer + explanation."""

from __future__ import annotations

from typing import Any

RELATION_PHRASES = {
    "AtLocation": "is located or found at", "CapableOf": "is capable of", "Causes": "causes",
    "CausesDesire": "makes someone want", "CreatedBy": "is created by", "Desires": "desires",
    "HasA": "has, possesses or contains", "HasFirstSubevent": "begins with", "HasLastSubevent": "ends with",
    "HasPrerequisite": "to do this, one requires", "HasProperty": "can be characterized by being",
    "HasSubEvent": "includes the event", "HinderedBy": "can be hindered by", "InstanceOf": "is an example of",
    "isAfter": "happens after", "isBefore": "happens before", "isFilledBy": "blank can be filled by",
    "MadeOf": "is made of", "MadeUpOf": "is made up of", "MotivatedByGoal": "is a step towards",
    "NotDesires": "does not desire", "ObjectUse": "is used for", "UsedFor": "is used for",
    "oEffect": "as a result, PersonY or others will", "oReact": "as a result, PersonY or others feel",
    "oWant": "as a result, PersonY or others want", "PartOf": "is a part of",
    "ReceivesAction": "can receive the action", "xAttr": "PersonX is seen as", "xEffect": "as a result, PersonX will",
    "xIntent": "because PersonX wanted", "xNeed": "but before, PersonX needed", "xReact": "as a result, PersonX feels",
    "xReason": "because", "xWant": "as a result, PersonX wants",
}


def verbalize(item: dict[str, Any]) -> str:
    kind = item.get("kind")
    if kind == "triple":
        rel = item.get("relation") or ""
        return f"{item.get('head') or ''}. {RELATION_PHRASES.get(rel, rel)} {item.get('tail') or ''}".strip()
    if kind in ("qa", "rationale"):
        text = f"Question: {item.get('question') or ''} Answer: {item.get('answer') or ''}"
        return f"{text} Explanation: {item['rationale']}" if item.get("rationale") else text
    return str(item.get("text") or "")


def verbalize_rows(rows: list[dict[str, Any]]) -> list[str]:
    return [verbalize(r) for r in rows]


def verbalize_pair(item: dict[str, Any]) -> tuple[str, str]:
    """An item as what it answers and its answer, for a critic that embeds them apart: a triple's head with its
    relation phrase and its tail; a question (and answer) and the explanation. Plain text has no context."""
    kind = item.get("kind")
    if kind == "triple":
        rel = item.get("relation") or ""
        return f"{item.get('head') or ''}. {RELATION_PHRASES.get(rel, rel)}".strip(), str(item.get("tail") or "")
    if kind in ("qa", "rationale"):
        question = f"Question: {item.get('question') or ''}"
        if item.get("rationale"):
            return f"{question} Answer: {item.get('answer') or ''}", str(item["rationale"])
        return question, f"Answer: {item.get('answer') or ''}"
    return "", str(item.get("text") or "")
