"""Autocapture elements: extraction, group hash and elements chain (spec: ingestion.md §5)."""

from __future__ import annotations

from plugin_server.ingestion.elements import Element, elements_chain, elements_from_chain, elements_hash, extract_elements

RAW = [
    {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"},
    {"tag_name": "div", "nth_child": 1, "nth_of_type": 2, "$el_text": "💻"},
]


def test_raw_elements_become_elements() -> None:
    """Each posthog-js item maps to element fields; attr__* keys are kept whole in attributes; order is the index."""
    raw = {"tag_name": "a", "$el_text": "t" * 500, "attr__href": "h" * 3000, "attr__id": "main", "attr__class": "x y", "nth_child": 3}
    [element] = extract_elements([raw]) or []
    assert element.text == "t" * 400
    assert element.href == "h" * 2048
    assert (element.tag_name, element.attr_id, element.attr_class, element.nth_child, element.nth_of_type) == ("a", "main", ["x", "y"], 3, None)
    assert element.attributes == {"attr__href": "h" * 3000, "attr__id": "main", "attr__class": "x y"}
    assert element.order == 0


def test_values_that_would_break_an_integer_column_are_dropped() -> None:
    """nth_child as text is read as a number; a non-number or a number past int32 becomes null."""
    elements = extract_elements([{"nth_child": "4"}, {"nth_child": "first"}, {"nth_child": 2**40}, {"nth_child": True}]) or []
    assert [element.nth_child for element in elements] == [4, None, None, None]


def test_only_a_non_empty_list_of_objects_is_extracted() -> None:
    """An empty list, a non-list, or a list holding non-objects is left in the properties (None)."""
    assert extract_elements([]) is None
    assert extract_elements("a") is None
    assert extract_elements([{"tag_name": "a"}, "b"]) is None


def test_hash_matches_posthog() -> None:
    """The original's test hashes: two elements, and the first alone."""
    assert elements_hash(extract_elements(RAW) or []) == "0679137c0cd2408a2906839143e7a71f"
    assert elements_hash(extract_elements(RAW[:1]) or []) == "a89021a60b3497d24e93ae181fba01aa"


def test_element_json_on_the_event_has_only_set_keys() -> None:
    """The event row's elements list holds the keys with values, and no order."""
    [first, second] = extract_elements(RAW) or []
    assert first.to_event_json() == {
        "tag_name": "a",
        "attr_class": ["btn", "btn-sm"],
        "nth_child": 1,
        "nth_of_type": 2,
        "attributes": {"attr__class": "btn btn-sm"},
    }
    assert second.to_event_json()["text"] == "💻"


def test_elements_chain() -> None:
    """The original's chain test: classes sorted, quotes escaped, attribute keys sorted, values as JavaScript renders them."""
    elements = [
        Element(
            tag_name="a",
            href="/a-url",
            attr_class=["small"],
            text="bla bla",
            attributes={"prop": "value", "number": 33, "data-attr": 'something " that; could mess up', "style": "min-height: 100vh;"},
            nth_child=1,
            nth_of_type=0,
        ),
        Element(tag_name="button", attr_class=["btn", "btn-primary"], nth_child=0, nth_of_type=0),
        Element(tag_name="span", attributes={"checked": True}),
    ]
    assert elements_chain(elements) == (
        'a.small:data-attr="something \\" that; could mess up"href="/a-url"nth-child="1"nth-of-type="0"'
        'number="33"prop="value"style="min-height: 100vh;"text="bla bla"'
        ';button.btn.btn-primary:nth-child="0"nth-of-type="0"'
        ';span:checked="true"nth-child="0"nth-of-type="0"'
    )
    assert elements_chain([]) == ""


def test_chain_reads_back_to_the_same_elements() -> None:
    """Reading a chain back gives elements with the same group hash (how ClickHouse output is checked)."""
    elements = extract_elements(RAW) or []
    assert elements_hash(elements_from_chain(elements_chain(elements))) == "0679137c0cd2408a2906839143e7a71f"


def test_chain_read_back_keeps_escapes_and_odd_classes() -> None:
    """Escaped quotes stay escaped, ';' inside a value does not split, a ':' in a class stays in the head."""
    [link, button] = elements_from_chain('a.hover:underline:data-x="say \\"hi\\"; bye"href="/x"nth-child="2";button:nth-of-type="1"')
    assert (link.tag_name, link.attr_class, link.href, link.nth_child) == ("a", ["hover:underline"], "/x", 2)
    assert link.attributes == {"data-x": 'say \\"hi\\"; bye'}
    assert (button.tag_name, button.nth_of_type, button.order) == ("button", 1, 1)
