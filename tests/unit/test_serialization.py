"""Tests for stepstone._serialization: canonical JSON, typed decoding, argument and error
records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import subprocess
import sys
import threading
import typing
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Optional

import msgspec
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepstone._serialization import (
    ArgumentCodec,
    describe_error,
    dumps,
    dumps_result,
    error_from_record,
    error_to_record,
    loads,
)
from stepstone.errors import Permanent, PermanentStoredError, SerializationError, StoredError

# --- value types used across the tests ------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Item:
    sku: str
    qty: int
    price: Decimal


class Point(msgspec.Struct):
    x: int
    y: int


class Stamp(pydantic.BaseModel):
    label: str
    at: dt.datetime


@dataclasses.dataclass
class Envelope:
    stamp: Stamp
    items: list[Item]
    note: str | None = None


class Plain:
    """A class msgspec does not know and that is not a pydantic model."""


class Greeter(typing.Protocol):
    def greet(self) -> str: ...


UTC = dt.UTC
WHEN = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
ENVELOPE = Envelope(
    stamp=Stamp(label="in", at=WHEN),
    items=[Item("a-1", 2, Decimal("9.99")), Item("b-2", 1, Decimal("0.10"))],
)

ROUND_TRIPS: list[tuple[object, object]] = [
    (None, type(None)),
    (True, bool),
    (42, int),
    (2**80, int),
    (1.5, float),
    ("text é ✓", str),
    ([1, "a", None], list[Any]),
    ({"a": 1, "b": [True]}, dict[str, Any]),
    (WHEN, dt.datetime),
    (dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime),
    (dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))), dt.datetime),
    (dt.date(2024, 2, 29), dt.date),
    (dt.time(23, 59, 59, 999999), dt.time),
    (dt.timedelta(days=-3, seconds=7, microseconds=11), dt.timedelta),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID),
    (Decimal("1234.5678"), Decimal),
    (b"\x00\xffbytes", bytes),
    (Item("a-1", 3, Decimal("2.50")), Item),
    (Color.BLUE, Color),
    (Level.HIGH, Level),
    (Point(1, -2), Point),
    ((1, "two", 3.0), tuple[int, str, float]),
    ({3, 1, 2}, set[int]),
    (frozenset({"x", "y"}), frozenset[str]),
    ({1: "one", 2: "two"}, dict[int, str]),
    ({uuid.UUID(int=7): 1}, dict[uuid.UUID, int]),
    ({"total": Decimal("1.10")}, dict[str, Decimal]),
    (Stamp(label="x", at=WHEN), Stamp),
    (ENVELOPE, Envelope),
    ([ENVELOPE], list[Envelope]),
    (None, Optional[dt.datetime]),  # noqa: UP045 - the typing spelling is what users write
    (WHEN, Optional[dt.datetime]),  # noqa: UP045
]


# --- dumps / loads ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "type_"), ROUND_TRIPS, ids=lambda v: type(v).__name__)
def test_typed_round_trip_gives_an_equal_value_of_the_same_type(
    value: object, type_: object
) -> None:
    """Decoding with the original type rebuilds an equal value of exactly that type."""
    result = loads(dumps(value), type_)
    assert result == value
    assert type(result) is type(value)


def test_nested_dataclass_of_pydantic_of_datetime_round_trips() -> None:
    """A dataclass holding a pydantic model holding an aware datetime comes back intact."""
    result = loads(dumps(ENVELOPE), Envelope)
    assert isinstance(result.stamp, Stamp)
    assert result.stamp.at == WHEN
    assert result.stamp.at.utcoffset() == dt.timedelta(0)
    assert isinstance(result.items[0], Item)
    assert result.items[0].price == Decimal("9.99")


def test_output_is_plain_readable_json() -> None:
    """Stored text is ordinary JSON: ISO dates, Decimal and UUID as strings, bytes as base64."""
    value = {"d": dt.date(2024, 1, 2), "n": Decimal("1.5"), "u": uuid.UUID(int=1), "b": b"hi"}
    assert dumps(value) == (
        '{"b":"aGk=","d":"2024-01-02","n":"1.5","u":"00000000-0000-0000-0000-000000000001"}'
    )


def test_untyped_loads_gives_plain_json_values() -> None:
    """Without a type, loads returns plain JSON values (strings for dates, lists for tuples)."""
    assert loads(dumps({"when": dt.date(2024, 1, 2), "pair": (1, 2)})) == {
        "when": "2024-01-02",
        "pair": [1, 2],
    }


def test_loads_accepts_bytes() -> None:
    """loads decodes UTF-8 bytes as well as str."""
    assert loads(b'{"a": [1, 2]}', dict[str, list[int]]) == {"a": [1, 2]}


def test_dict_key_order_does_not_change_the_text() -> None:
    """Dicts with the same items in a different insertion order give the same text."""
    first = {"b": 1, "a": {"y": 2, "x": 3}}
    second = {"a": {"x": 3, "y": 2}, "b": 1}
    assert dumps(first) == dumps(second) == '{"a":{"x":3,"y":2},"b":1}'


def test_non_str_keys_are_stored_sorted() -> None:
    """Int-keyed dicts (which msgspec will not sort itself) are still canonical."""
    assert dumps({2: "b", 1: "a", 10: "c"}) == dumps({10: "c", 1: "a", 2: "b"})
    assert dumps({2: "b", 1: "a"}) == '{"1":"a","2":"b"}'


def test_sets_are_stored_sorted() -> None:
    """Equal sets give the same text whatever order they iterate in."""
    first, second = {8, 16}, {16, 8}  # colliding hashes: iteration order differs
    assert list(first) != list(second)
    assert dumps(first) == dumps(second) == "[8,16]"
    assert dumps(frozenset(second)) == "[8,16]"


def test_dataclass_fields_are_stored_sorted() -> None:
    """Dataclass fields are written in sorted order, like dict keys."""
    assert dumps(Item("s", 1, Decimal(2))) == '{"price":"2","qty":1,"sku":"s"}'


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(object(), "object"), (threading.Lock(), "lock"), (lambda: None, "function")],
    ids=["object", "lock", "lambda"],
)
def test_unsupported_value_names_its_type(value: object, type_name: str) -> None:
    """Storing an unsupported value raises SerializationError naming the value's type."""
    with pytest.raises(SerializationError, match=f"type '{type_name}'"):
        dumps(value)


def test_unsupported_value_nested_in_a_container_names_its_own_type() -> None:
    """The error names the offending nested value, not the container around it."""
    with pytest.raises(SerializationError, match="type 'Plain'"):
        dumps({"ok": [1, Plain()]})


def test_serialization_error_is_a_type_error() -> None:
    """SerializationError can be caught as a TypeError."""
    with pytest.raises(TypeError):
        dumps(object())


def test_unsupported_dict_keys_raise_serialization_error() -> None:
    """Tuple keys, which JSON cannot hold, raise SerializationError chained to msgspec's error."""
    with pytest.raises(SerializationError, match="type 'dict'") as info:
        dumps({(1, 2): "pair"})
    assert isinstance(info.value.__cause__, TypeError)


def test_unencodable_string_raises_serialization_error() -> None:
    """A lone surrogate, which UTF-8 cannot hold, raises SerializationError."""
    with pytest.raises(SerializationError, match="type 'str'"):
        dumps("\ud800")


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), {"score": -float("inf")}, [1.0, float("nan")], {1: float("nan")}],
)
def test_non_finite_floats_are_refused(value: object) -> None:
    """NaN and infinities are refused (JSON would store null, which replays as None)."""
    with pytest.raises(SerializationError, match="no NaN or infinity"):
        dumps(value)


def test_none_is_still_stored_as_null() -> None:
    """A real None beside finite floats is stored as null and loads back."""
    assert loads(dumps({"a": None, "b": [1.5]})) == {"a": None, "b": [1.5]}


def test_decode_error_names_the_expected_type() -> None:
    """A stored value of the wrong shape raises SerializationError naming the expected type."""
    with pytest.raises(SerializationError, match=r"list\[int\].*Expected `int`, got `str`"):
        loads('[1, "x"]', list[int])


def test_invalid_json_raises_serialization_error() -> None:
    """Malformed JSON raises SerializationError, not msgspec's own error."""
    with pytest.raises(SerializationError, match="cannot load stored JSON"):
        loads("{not json")


def test_pydantic_validation_failure_raises_serialization_error() -> None:
    """A pydantic model that rejects the stored data raises SerializationError."""
    with pytest.raises(SerializationError, match="Stamp"):
        loads('{"label": "x", "at": "not a date"}', Stamp)


@pytest.mark.parametrize(
    "type_",
    [
        Plain,
        list[Plain],
        Greeter,
        typing.Callable[[int], int],
        list[5],  # type: ignore[valid-type]
        "Undefined",
        Annotated[Plain, {"unhashable": True}],
    ],
    ids=["plain", "list-plain", "protocol", "callable", "bad-generic", "str", "unhashable"],
)
def test_unusable_annotation_falls_back_to_untyped_decoding(type_: object) -> None:
    """An annotation msgspec cannot use decodes as plain JSON instead of failing."""
    assert loads('[{"a": 1}]', type_) == [{"a": 1}]
    assert loads('[{"a": 1}]', type_) == [{"a": 1}]  # and again, from the cached decision


def test_unhashable_usable_annotation_still_decodes_typed() -> None:
    """An annotation that cannot be a cache key is still used to decode."""
    type_ = Annotated[list[int], {"unhashable": True}]
    assert loads("[1, 2]", type_) == [1, 2]
    with pytest.raises(SerializationError, match="Expected `int`"):
        loads('["x"]', type_)


def test_typevar_annotation_decodes_untyped() -> None:
    """A bare TypeVar annotation accepts any JSON value."""
    t = typing.TypeVar("t")
    assert loads('{"a": [1]}', t) == {"a": [1]}


# --- hypothesis properties ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=8,
)

offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)


@settings(max_examples=60, deadline=None)
@given(json_values)
def test_json_values_round_trip_untyped(value: object) -> None:
    """Any JSON-ish value loads back equal to itself."""
    assert loads(dumps(value)) == value


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=6))
def test_dict_text_ignores_insertion_order(value: dict[str, object]) -> None:
    """Reversing a dict's insertion order does not change its stored text."""
    assert dumps(value) == dumps(dict(reversed(list(value.items()))))


@given(st.datetimes(timezones=st.none() | offsets))
def test_datetimes_round_trip(value: dt.datetime) -> None:
    """Naive and offset datetimes come back equal, with the same UTC offset."""
    result = loads(dumps(value), dt.datetime)
    assert result == value
    assert result.utcoffset() == value.utcoffset()


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimals_round_trip_exactly(value: Decimal) -> None:
    """Decimals keep their exact digits and exponent."""
    result = loads(dumps(value), Decimal)
    assert result == value
    assert str(result) == str(value)


@given(st.uuids(), st.binary(max_size=64), st.timedeltas(), st.dates())
def test_scalars_round_trip_typed(
    uid: uuid.UUID, blob: bytes, delta: dt.timedelta, day: dt.date
) -> None:
    """UUIDs, bytes, timedeltas and dates survive a typed round trip inside a tuple."""
    value = (uid, blob, delta, day)
    assert loads(dumps(value), tuple[uuid.UUID, bytes, dt.timedelta, dt.date]) == value


# --- dumps_result -------------------------------------------------------------------------------


def test_dumps_result_accepts_a_matching_value() -> None:
    """A value that fits its return annotation is stored as by dumps."""
    assert dumps_result([Item("a", 1, Decimal(1))], list[Item]) == dumps([Item("a", 1, Decimal(1))])


def test_dumps_result_rejects_a_mismatch() -> None:
    """A value that does not fit its return annotation raises naming both types."""
    with pytest.raises(SerializationError, match=r"type 'str' does not match.*annotation int"):
        dumps_result("nope", int)


@pytest.mark.parametrize("type_", [Any, object, Plain])
def test_dumps_result_does_not_check_open_annotations(type_: object) -> None:
    """Any, object and unusable annotations accept every storable value."""
    assert dumps_result({"a": 1}, type_) == '{"a":1}'


def test_dumps_result_still_rejects_unstorable_values() -> None:
    """An unstorable value fails even when the annotation is Any."""
    with pytest.raises(SerializationError, match="type 'lock'"):
        dumps_result(threading.Lock(), Any)


# --- ArgumentCodec ------------------------------------------------------------------------------


def place_order(
    item: Item, qty: int = 1, *extras: Decimal, when: dt.datetime, **tags: Color
) -> uuid.UUID:
    """A job-like function using every kind of parameter."""
    raise NotImplementedError


def simple(a: int, b: str = "x", /, c: float = 0.5, *, d: bool = False) -> None:
    """Positional-only, positional-or-keyword and keyword-only parameters with defaults."""


def test_bind_applies_defaults_in_parameter_order() -> None:
    """bind maps every parameter to its value, defaults included, in signature order."""
    assert ArgumentCodec(simple).bind((1,), {}) == {"a": 1, "b": "x", "c": 0.5, "d": False}


def test_bind_collects_var_positional_and_var_keyword() -> None:
    """*args become a sequence and **kwargs a dict under their parameter names."""
    item = Item("s", 1, Decimal(1))
    bound = ArgumentCodec(place_order).bind(
        (item, 2, Decimal("0.5")), {"when": WHEN, "size": Color.RED}
    )
    assert bound == {
        "item": item,
        "qty": 2,
        "extras": (Decimal("0.5"),),
        "when": WHEN,
        "tags": {"size": Color.RED},
    }


def test_bind_failure_names_the_function() -> None:
    """Missing or extra arguments raise TypeError naming the function and the problem."""
    codec = ArgumentCodec(simple)
    with pytest.raises(TypeError, match=r"simple.*missing a required argument: 'a'"):
        codec.bind((), {})
    with pytest.raises(TypeError, match=r"simple.*unexpected keyword argument 'z'"):
        codec.bind((1,), {"z": 2})


def test_positional_and_keyword_calls_encode_the_same() -> None:
    """The same values passed positionally or by keyword give the same text."""
    codec = ArgumentCodec(place_order)
    item = Item("s", 1, Decimal(1))
    assert codec.encode((item, 1), {"when": WHEN}) == codec.encode(
        (), {"when": WHEN, "qty": 1, "item": item}
    )
    assert codec.encode((item,), {"when": WHEN}) == codec.encode((item, 1), {"when": WHEN})


def test_encode_bound_matches_encode() -> None:
    """encode_bound of bind's result gives the same text as encode."""
    codec = ArgumentCodec(simple)
    assert codec.encode_bound(codec.bind((1, "y"), {"d": True})) == codec.encode(
        (1, "y"), {"d": True}
    )


def test_decode_rebuilds_a_call_with_typed_values() -> None:
    """decode returns args and kwargs that recreate the call, each value of its annotated type."""
    codec = ArgumentCodec(place_order)
    item = Item("s", 2, Decimal("3.30"))
    text = codec.encode((item, 4, Decimal("1.5"), Decimal("2")), {"when": WHEN, "hue": Color.BLUE})
    args, kwargs = codec.decode(text)
    assert args == (item, 4, Decimal("1.5"), Decimal("2"))
    assert type(args[0]) is Item
    assert kwargs == {"when": WHEN, "hue": Color.BLUE}
    assert type(kwargs["hue"]) is Color


def test_decode_puts_keyword_only_parameters_in_kwargs() -> None:
    """Positional parameters come back in args, keyword-only ones in kwargs."""
    codec = ArgumentCodec(simple)
    args, kwargs = codec.decode(codec.encode((1, "b", 2.0), {"d": True}))
    assert args == (1, "b", 2.0)
    assert kwargs == {"d": True}
    simple(*args, **kwargs)


def test_decode_fills_in_a_missing_defaulted_parameter() -> None:
    """A stored object written before a defaulted parameter existed still decodes."""
    args, kwargs = ArgumentCodec(simple).decode('{"a": 7}')
    assert args == (7, "x", 0.5)
    assert kwargs == {}


def test_decode_missing_required_parameter_names_it() -> None:
    """A stored object without a required parameter raises SerializationError naming it."""
    with pytest.raises(SerializationError, match="required parameter 'when'"):
        ArgumentCodec(place_order).decode('{"item": {"sku": "s", "qty": 1, "price": "1"}}')


def test_decode_unknown_parameter_names_it() -> None:
    """A stored object with a parameter the function lacks raises SerializationError naming it."""
    with pytest.raises(SerializationError, match="unknown parameter 'zzz'"):
        ArgumentCodec(simple).decode('{"a": 1, "zzz": 2}')


def test_decode_bad_value_names_the_parameter() -> None:
    """A stored value that does not fit its annotation raises naming the parameter."""
    with pytest.raises(SerializationError, match=r"argument 'c' of simple.*float"):
        ArgumentCodec(simple).decode('{"a": 1, "c": "fast"}')


def test_decode_rejects_non_object_data() -> None:
    """Stored arguments that are not a JSON object raise SerializationError."""
    with pytest.raises(SerializationError, match="not a JSON object"):
        ArgumentCodec(simple).decode("[1, 2]")


def test_return_type_is_the_resolved_annotation() -> None:
    """return_type is the annotation, Any when missing, and None-typed for -> None."""
    assert ArgumentCodec(place_order).return_type is uuid.UUID
    assert ArgumentCodec(lambda x: x).return_type is Any
    none_type = ArgumentCodec(simple).return_type
    assert loads("null", none_type) is None
    assert dumps_result(None, none_type) == "null"


def test_async_function_return_type_is_the_awaited_type() -> None:
    """For async def the return annotation is used as is."""

    async def fetch(n: int) -> list[int]:
        return [n]

    assert ArgumentCodec(fetch).return_type == list[int]


def test_unresolvable_hints_fall_back_to_any_with_a_warning() -> None:
    """An annotation that cannot be resolved decodes untyped, warns, and spares the others."""

    def job(a: MissingType, b: int) -> AlsoMissing:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    codec = ArgumentCodec(job)
    with pytest.warns(UserWarning, match="cannot be resolved"):
        assert codec.return_type is Any
    assert codec.decode(codec.encode(({"k": 1}, 2), {})) == (({"k": 1}, 2), {})
    assert codec._hints["b"] is int


def test_hints_resolve_on_first_use() -> None:
    """Annotations may name a class defined after the codec is made."""
    namespace: dict[str, Any] = {}
    exec(  # builds a module-like namespace for the test
        "from __future__ import annotations\ndef job(p: Later) -> Later: ...\n", namespace
    )
    codec = ArgumentCodec(namespace["job"])
    namespace["Later"] = Item
    args, _ = codec.decode('{"p": {"sku": "s", "qty": 1, "price": "2"}}')
    assert args == (Item("s", 1, Decimal(2)),)


def test_bound_methods_and_partials_are_supported() -> None:
    """Bound methods drop self, partials drop bound arguments, and hints still apply."""

    class Service:
        def run(self, when: dt.date) -> None: ...

    method_codec = ArgumentCodec(Service().run)
    assert method_codec.decode(method_codec.encode((dt.date(2024, 1, 2),), {})) == (
        (dt.date(2024, 1, 2),),
        {},
    )
    partial_codec = ArgumentCodec(functools.partial(simple, 1))
    assert partial_codec.decode('{"b": "q", "c": 1.0}') == (("q", 1.0), {})
    assert "simple" in partial_codec.qualname


# --- error records ------------------------------------------------------------------------------


class Unbuildable(Exception):
    """Its constructor needs two arguments, but its args hold only the message."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


class FatalUnbuildable(Permanent):
    """A Permanent error that cannot be rebuilt from its args."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


class Fatal(Permanent):
    """A Permanent error that can be rebuilt."""


def _raised(exc: BaseException) -> BaseException:
    """Raise and catch ``exc`` so that it carries a traceback."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def _replay(exc: BaseException) -> BaseException:
    """Record an exception, store the record as JSON, and rebuild it."""
    return error_from_record(loads(dumps(error_to_record(_raised(exc)))))


def test_error_record_fields() -> None:
    """A record holds the dotted type, message, args, traceback text and permanence."""
    record = error_to_record(_raised(ValueError("bad input", 3)))
    assert record["type"] == "builtins.ValueError"
    assert record["message"] == "('bad input', 3)"
    assert record["args"] == ["bad input", 3]
    assert "Traceback (most recent call last)" in record["traceback"]
    assert "ValueError" in record["traceback"]
    assert record["permanent"] is False
    assert loads(dumps(record)) == record


def test_unstorable_args_are_recorded_as_none() -> None:
    """Args that cannot be stored as JSON are recorded as None."""
    assert error_to_record(ValueError(threading.Lock()))["args"] is None


def test_builtin_error_keeps_its_class_and_message() -> None:
    """A builtin ValueError comes back as a ValueError with the same message."""
    rebuilt = _replay(ValueError("boom"))
    assert type(rebuilt) is ValueError
    assert str(rebuilt) == "boom"


def test_rebuilt_error_carries_the_stored_traceback() -> None:
    """The rebuilt exception has the stored traceback as a note and as remote_traceback."""
    rebuilt = _replay(KeyError("missing"))
    assert type(rebuilt) is KeyError
    assert "Traceback" in rebuilt.remote_traceback  # type: ignore[attr-defined]
    assert rebuilt.__notes__[0].startswith("stored traceback:\n")


def test_rebuildable_permanent_error_keeps_its_class() -> None:
    """A Permanent subclass that can be rebuilt comes back as itself."""
    rebuilt = _replay(Fatal("stop"))
    assert type(rebuilt) is Fatal
    assert isinstance(rebuilt, Permanent)


def test_error_with_its_own_constructor_keeps_its_class_and_fields() -> None:
    """A class whose __init__ takes other arguments than its args is rebuilt, fields too."""
    original = Unbuildable(4, "nope")
    original.code = 4  # type: ignore[attr-defined]
    rebuilt = _replay(original)
    assert type(rebuilt) is Unbuildable
    assert str(rebuilt) == "4: nope"
    assert rebuilt.code == 4  # type: ignore[attr-defined]


def test_error_of_a_class_not_loaded_here_gives_a_stored_error() -> None:
    """A class whose module is not imported in this process gives a StoredError stand-in."""
    record = error_to_record(_raised(Unbuildable(4, "nope")))
    record["type"] = "some_module_not_imported.Unbuildable"
    rebuilt = error_from_record(loads(dumps(record)))
    assert type(rebuilt) is StoredError
    assert "Unbuildable" in str(rebuilt)
    assert "4: nope" in str(rebuilt)
    assert rebuilt.type_name == "some_module_not_imported.Unbuildable"
    assert "Traceback" in (rebuilt.remote_traceback or "")
    assert not isinstance(rebuilt, Permanent)


def test_permanent_error_not_loaded_here_stays_permanent() -> None:
    """A Permanent error whose class is not loaded here gives a PermanentStoredError."""
    record = error_to_record(_raised(FatalUnbuildable(9, "fatal")))
    record["type"] = "some_module_not_imported.FatalUnbuildable"
    rebuilt = error_from_record(loads(dumps(record)))
    assert type(rebuilt) is PermanentStoredError
    assert isinstance(rebuilt, Permanent)


def test_missing_class_gives_a_stored_error() -> None:
    """A record naming a class that no longer exists gives a StoredError."""
    record = {
        "type": "no_such_module_here.GoneError",
        "message": "gone",
        "args": ["gone"],
        "traceback": "",
        "permanent": False,
    }
    rebuilt = error_from_record(record)
    assert type(rebuilt) is StoredError
    assert str(rebuilt) == "no_such_module_here.GoneError: gone"


def test_local_class_gives_a_stored_error() -> None:
    """A class defined inside a function cannot be imported and gives a stand-in."""

    class LocalError(Exception):
        pass

    rebuilt = _replay(LocalError("here"))
    assert isinstance(rebuilt, StoredError)
    assert "LocalError: here" in str(rebuilt)


def test_non_exception_class_is_not_rebuilt() -> None:
    """A record naming something that is not an exception class gives a stand-in."""
    record = {"type": "builtins.dict", "message": "m", "args": [], "permanent": False}
    assert type(error_from_record(record)) is StoredError


def test_stand_in_recorded_again_keeps_the_original_type() -> None:
    """Recording a replayed stand-in stores the original type and message, not StoredError."""
    stand_in = _replay(Unbuildable(1, "x"))
    record = error_to_record(stand_in)
    assert record["type"].endswith(".Unbuildable")
    assert record["message"] == "1: x"


def test_describe_error() -> None:
    """describe_error gives 'TypeName: message', or the type name alone without a message."""
    assert describe_error(ValueError("boom")) == "ValueError: boom"
    assert describe_error(RuntimeError()) == "RuntimeError"
    assert describe_error(StoredError("pkg.Thing", "bad")) == "pkg.Thing: bad"


# --- packaging --------------------------------------------------------------------------------


def test_module_does_not_import_pydantic() -> None:
    """Importing stepstone._serialization does not import pydantic."""
    src = Path(__file__).resolve().parents[2] / "src"
    code = "import sys, stepstone._serialization; sys.exit('pydantic' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(src)}, check=False, timeout=30
    )
    assert result.returncode == 0
