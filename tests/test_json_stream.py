"""Reading a MISP answer's attribute array one element at a time, exactly as json.loads would."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from misp_dns.intel.json_stream import NotStreamable, array_elements, object_members

PATH = ("response", "Attribute")

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
attributes = st.lists(st.dictionaries(st.sampled_from(["id", "type", "value", "uuid"]), values))


def document(elements: list[Any], extra: dict[str, Any], inner_extra: dict[str, Any]) -> dict:
    response = {**{k: v for k, v in inner_extra.items() if k != "Attribute"}, "Attribute": elements}
    return {**{k: v for k, v in extra.items() if k != "response"}, "response": response}


@given(
    attributes,
    st.dictionaries(st.text(), values, max_size=3),
    st.dictionaries(st.text(), values, max_size=3),
    st.sampled_from([None, 0, 2]),
    st.booleans(),
)
def test_every_well_formed_answer_streams_as_json_loads_reads_it(
    elements: list[Any],
    extra: dict[str, Any],
    inner_extra: dict[str, Any],
    indent: int | None,
    ascii_only: bool,
) -> None:
    """A restSearch answer, however laid out, gives the attributes json.loads gives."""
    text = json.dumps(
        document(elements, extra, inner_extra), indent=indent, ensure_ascii=ascii_only
    )
    assert list(array_elements(text, PATH)) == json.loads(text)["response"]["Attribute"]


@given(st.text(max_size=200) | values.map(json.dumps))
def test_anything_else_streams_the_same_or_is_refused(text: str) -> None:
    """Whatever the server sends, the reader agrees with json.loads or raises ValueError."""
    try:
        streamed = list(array_elements(text, PATH))
    except ValueError:
        return
    assert streamed == json.loads(text)["response"]["Attribute"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"response": []}', "expected '{'"),
        ('{"response": {"Attribute": null}}', "expected '\\['"),
        ('{"response": {}}', "no key 'Attribute'"),
        ('{"response": {"Attribute": [1]}} []', "data after the document"),
        ('{"response": {"Attribute": [1]}, "response": {"Attribute": [2]}}', "repeated"),
        ('{"response": {"Attribute": [1 2]}}', "expected ',' or"),
        ('\ufeff{"response": {"Attribute": []}}', "expected '{'"),
    ],
)
def test_other_shapes_are_left_to_json_loads(text: str, reason: str) -> None:
    """Empty answers of old MISPs, repeated keys, a BOM: refused, so the caller decodes whole."""
    with pytest.raises(NotStreamable, match=reason):
        list(array_elements(text, PATH))


def test_broken_json_inside_an_element_is_a_decode_error() -> None:
    """A truncated body fails with json's own error after the elements before it."""
    text = '{"response": {"Attribute": [{"id": "1"}, {"id": '
    elements = array_elements(text, PATH)
    assert next(elements) == {"id": "1"}
    with pytest.raises(json.JSONDecodeError):
        next(elements)


@given(st.dictionaries(st.text(max_size=8), values, max_size=6), st.sampled_from([None, 1]))
def test_object_members_give_the_members_json_loads_gives(
    members: dict[str, Any], indent: int | None
) -> None:
    """A feed event's members come in document order, the streamed arrays element by element."""
    streamed = {key for key, value in members.items() if isinstance(value, list)}
    text = json.dumps({"Event": members}, indent=indent)
    expected = [
        (key, element)
        for key, value in json.loads(text)["Event"].items()
        for element in (value if key in streamed else [value])
    ]
    assert list(object_members(text, ("Event",), streamed)) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"Event": {"Attribute": null}}', "expected '\\['"),
        ('{"Event": {"info": "a", "info": "b"}}', "repeated"),
        ('{"Event": []}', "expected '{'"),
        ('{"event": {}}', "no key 'Event'"),
    ],
)
def test_events_of_other_shapes_are_left_to_json_loads(text: str, reason: str) -> None:
    """A streamed member that is not an array, a repeated key, no Event: refused."""
    with pytest.raises(NotStreamable, match=reason):
        list(object_members(text, ("Event",), {"Attribute"}))
