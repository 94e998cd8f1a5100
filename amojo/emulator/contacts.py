"""amoCRM's contacts as REST v4 sees them (§6): what a new contact may hold, what it is found by, and its request_id."""

from __future__ import annotations

from typing import Any

from .inputs import is_int
from .store import digits


def request_id(item: Any, index: int) -> str:
    """The request_id amoCRM echoes: the one sent, or the position (§6.3)."""
    given = item.get("request_id") if isinstance(item, dict) else None
    return given if isinstance(given, str) else str(index)


def contact_fields(item: dict) -> tuple[list[str], list[str]]:
    """The phones (digits) and emails of a contact whose shape `contact_problems` has passed."""
    phones, emails = [], []
    for field in item.get("custom_fields_values") or []:
        code = field.get("field_code")
        values = [str(v.get("value", "")) for v in field.get("values") or []]
        if code == "PHONE":
            phones += [digits(v) for v in values if digits(v)]
        elif code == "EMAIL":
            emails += [v.lower() for v in values if v]
    return phones, emails


def _invalid(path: str, detail: str) -> dict[str, str]:
    return {"code": "InvalidType", "path": path, "detail": detail}


def contact_problems(item: Any) -> list[dict[str, str]]:
    """What is wrong with one contact of POST /api/v4/contacts, as amoCRM's validation-errors list (§5.3)."""
    if not isinstance(item, dict):
        return [_invalid("", "a contact must be an object")]
    problems = []
    for key in ("name", "first_name", "last_name", "request_id"):
        if item.get(key) is not None and not isinstance(item[key], str):
            problems.append(_invalid(key, "This value should be of type string."))
    for key in ("responsible_user_id", "created_by", "updated_by", "created_at", "updated_at"):
        if item.get(key) is not None and not is_int(item[key]):
            problems.append(_invalid(key, "This value should be of type int."))
    fields = item.get("custom_fields_values")
    if fields is None:
        return problems
    if not isinstance(fields, list):
        return problems + [_invalid("custom_fields_values", "This value should be of type array.")]
    for index, field in enumerate(fields):
        problems += _field_problems(f"custom_fields_values.{index}", field)
    return problems


def _field_problems(path: str, field: Any) -> list[dict[str, str]]:
    """What is wrong with one entry of a contact's `custom_fields_values`."""
    if not isinstance(field, dict):
        return [_invalid(path, "This value should be of type object.")]
    problems = []
    if field.get("field_code") is not None and not isinstance(field["field_code"], str):
        problems.append(_invalid(f"{path}.field_code", "This value should be of type string."))
    if field.get("field_id") is not None and not is_int(field["field_id"]):
        problems.append(_invalid(f"{path}.field_id", "This value should be of type int."))
    values = field.get("values")
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        problems.append(_invalid(f"{path}.values", "This value should be an array of objects."))
        return problems
    for number, value in enumerate(values):
        if isinstance(value.get("value"), dict | list):
            problems.append(_invalid(f"{path}.values.{number}.value", "This value should be a scalar."))
    return problems


def contact_matches(contact: dict, query: str) -> bool:
    """amoCRM's `query` searches every filled field: phone digits, an email, or else a case-insensitive substring
    of the name or of any custom field's value (e.g. a key in the IM field) (§6, issues 3 and 12)."""
    lowered = query.lower()
    query_digits = digits(query)
    looks_like_phone = len(query_digits) >= 5 and len(query_digits) >= len(query.strip()) // 2 \
        and not any(ch.isalpha() for ch in query)  # a key such as amojoetl3f9a… is mostly digits, but not a phone
    if looks_like_phone:
        return any(query_digits in phone or phone in query_digits for phone in contact["phones"])
    if "@" in lowered:
        return lowered in contact["emails"]
    return lowered in contact["name"].lower() or any(lowered in value.lower() for value in contact["values"])
