"""The $set / $set_once / $increment rules as pure functions (spec: ingestion.md §4.6)."""

from __future__ import annotations

import pytest

from plugin_server.ingestion.person_properties import (
    incremented,
    jsonb_text,
    merged_properties,
    updated_properties,
    valid_increments,
)


def test_set_overwrites_and_set_once_fills_gaps():
    """{plan: free, city: Oslo} + $set {plan: pro, seats: 3} → pro; the same as $set_once keeps free."""
    person = {"plan": "free", "city": "Oslo"}
    assert updated_properties(person, {"plan": "pro", "seats": 3}, {}, {}) == {"plan": "pro", "city": "Oslo", "seats": 3}
    assert updated_properties(person, {}, {"plan": "pro", "seats": 3}, {}) == {"plan": "free", "city": "Oslo", "seats": 3}


def test_increment_filter_keeps_whole_non_zero_numbers():
    """NaN, Infinity, 1.2, "1", 0 and booleans are dropped; 2.0 counts as 2."""
    given = {"a": 1, "b": -5, "c": float("nan"), "d": float("inf"), "e": 1.2, "f": "1", "g": 0, "h": True, "i": 2.0}
    assert valid_increments(given) == {"a": 1, "b": -5, "i": 2}
    assert valid_increments(None) == {} and valid_increments([1]) == {}


@pytest.mark.parametrize(
    ("current", "amount", "expected"),
    [
        (None, 3, 3),
        (2, 1, 3),
        ("5", 1, 6),
        (-2.5, 1, -1.5),
        ("world", 1, None),
        (True, 1, None),
        ([1], 1, None),
        ("1.2.3", 1, None),
        (2**60, 1, 2**60 + 1),
    ],
)
def test_incremented(current, amount, expected):
    """A missing value counts as 0; numeric text is added exactly; anything else is left (None)."""
    assert incremented(current, amount) == expected


def test_increments_apply_on_top_of_set():
    """The increment of a key $set in the same event adds to the $set value."""
    assert updated_properties({"n": 1}, {"n": 10}, {}, {"n": 1}) == {"n": 11}


def test_merge_keeps_the_survivors_values():
    """Merging adds the other person's keys; the survivor's values win."""
    assert merged_properties({"a": 1}, {"a": 2, "b": 3}) == {"a": 1, "b": 3}


def test_jsonb_text_replaces_what_jsonb_refuses():
    """NUL becomes U+FFFD and NaN becomes null; other text is compact JSON."""
    assert jsonb_text({"a": "x\x00y", "n": [float("inf")]}) == '{"a":"x\\ufffdy","n":[null]}'
    assert jsonb_text({"a": 1}) == '{"a":1}'
