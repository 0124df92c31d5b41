"""How stepstone stores values: canonical JSON text, never pickle.

Arguments, step results, job results and error records are stored as JSON
text written by msgspec. Output is canonical (dict keys and set items sorted),
so the same value always gives the same text; that is what lets a job key
compare arguments by text.

msgspec handles the JSON types, ``datetime``/``date``/``time``/``timedelta``,
``UUID``, ``Decimal``, ``bytes`` (base64), dataclasses, enums, msgspec Structs,
tuples, lists, sets, frozensets and dicts natively. The hooks here add pydantic
v2 models, detected by duck typing so pydantic stays an optional dependency.

Decoding is typed when a type is given: ``loads(text, list[Item])`` rebuilds
``Item`` objects. An annotation msgspec cannot use (a Protocol, a Callable, a
plain class, an unresolvable name) falls back to plain JSON values instead of failing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import sys
import traceback
import types
import typing
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from stepstone.errors import Permanent, PermanentStoredError, SerializationError, StoredError

_SUPPORTED = (
    "pass JSON types, dataclasses, msgspec Structs, pydantic models, enums, "
    "datetime/date/time/timedelta, UUID, Decimal, bytes, or tuples, lists, sets "
    "and dicts of these, or convert it first"
)

# Errors msgspec (or a hook it calls) raises for a value it cannot write or read.
_CODEC_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)


def _type_label(type_: object) -> str:
    """Name a type the way a person wrote it: ``Item``, ``list[Item]``, ``int | None``."""
    if isinstance(type_, type):
        return type_.__qualname__
    return repr(type_).replace("typing.", "")


def _is_pydantic_model(cls: object) -> bool:
    """Tell whether ``cls`` is a pydantic v2 model class, without importing pydantic."""
    return isinstance(cls, type) and hasattr(cls, "model_validate") and hasattr(cls, "model_dump")


def _encode_extra(value: Any) -> Any:
    """msgspec ``enc_hook``: turn a value msgspec does not know into JSON-ready data."""
    if _is_pydantic_model(type(value)):
        return value.model_dump(mode="json")
    raise SerializationError(
        f"cannot store a value of type {type(value).__qualname__!r} as JSON: "
        f"it is not a type stepstone can store; {_SUPPORTED}"
    )


class _UnknownType(Exception):
    """Raised by the decode hook for a type that is neither msgspec's nor a pydantic model.

    It is not a TypeError/ValueError, so msgspec lets it through unwrapped.
    """


def _decode_extra(type_: Any, obj: Any) -> Any:
    """msgspec ``dec_hook``: build a pydantic model; signal any other unknown type."""
    if _is_pydantic_model(type_):
        return type_.model_validate(obj)
    raise _UnknownType(type_)


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_extra, order="sorted")
_ANY_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_decoders: dict[object, msgspec.json.Decoder[Any]] = {Any: _ANY_DECODER, object: _ANY_DECODER}


def dumps(value: object) -> str:
    """Return ``value`` as canonical JSON text (sorted keys), or raise SerializationError."""
    try:
        text = _ENCODER.encode(value).decode()
    except SerializationError:
        raise
    except _CODEC_ERRORS:
        # msgspec sorts only str-keyed dicts; ``to_builtins(str_keys=True)`` first turns
        # int/UUID/enum/... keys into their JSON strings, which then sort.
        pass
    else:
        if "null" in text:  # JSON has no NaN or infinity: msgspec writes them as null
            _refuse_non_finite(value)
        return text
    try:
        plain = msgspec.to_builtins(value, enc_hook=_encode_extra, str_keys=True, order="sorted")
        _refuse_non_finite(plain)
        return _ENCODER.encode(plain).decode()
    except SerializationError:
        raise
    except _CODEC_ERRORS as exc:
        raise SerializationError(
            f"cannot store a value of type {type(value).__qualname__!r} as JSON: {exc}; "
            f"{_SUPPORTED}"
        ) from exc


def _refuse_non_finite(value: object) -> None:
    """Raise SerializationError if ``value`` holds a NaN or an infinity anywhere.

    Stored as null, it would come back as None (or fail to load as a float) on replay.
    """
    plain = msgspec.to_builtins(value, enc_hook=_encode_extra, str_keys=True)
    stack = [plain]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise SerializationError(
                f"cannot store the float {item!r} as JSON (it has no NaN or infinity); "
                "return None, a string or a Decimal instead"
            )
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _build_decoder(type_: object) -> msgspec.json.Decoder[Any]:
    """Make a typed decoder, or the untyped one when msgspec cannot use the annotation."""
    try:
        return msgspec.json.Decoder(type_, dec_hook=_decode_extra)
    except Exception:  # TypeError for unsupported types, NameError for unresolved hints, ...
        return _ANY_DECODER


def _decoder_for(type_: object) -> msgspec.json.Decoder[Any]:
    """Return the cached decoder for ``type_``; unhashable annotations get an uncached one."""
    try:
        decoder = _decoders.get(type_)
    except TypeError:
        return _build_decoder(type_)
    if decoder is None:
        decoder = _decoders[type_] = _build_decoder(type_)
    return decoder


def _decode(decoder: msgspec.json.Decoder[Any], data: str | bytes, type_: object) -> Any:
    """Decode ``data`` with ``decoder``, turning failures into SerializationError."""
    try:
        return decoder.decode(data)
    except _UnknownType:
        # msgspec accepts any class as an annotation but insists that the hook builds an
        # instance of it; for classes we cannot build, decode plain JSON from now on.
        with contextlib.suppress(TypeError):
            _decoders[type_] = _ANY_DECODER
        return _decode(_ANY_DECODER, data, type_)
    except _CODEC_ERRORS as exc:
        raise SerializationError(f"cannot load stored JSON as {_type_label(type_)}: {exc}") from exc


def loads(data: str | bytes, type_: object = Any) -> Any:
    """Decode JSON text, as ``type_`` when given (plain JSON values when it is unusable)."""
    return _decode(_decoder_for(type_), data, type_)


def _is_unchecked(type_: object) -> bool:
    """Tell whether an annotation accepts anything (missing, ``Any`` or ``object``)."""
    return type_ is Any or type_ is object or type_ is inspect.Parameter.empty


#: Annotations whose values, when exactly of that type, always load back as it (not
#: ``float``: NaN and infinities are stored as null).
_ROUND_TRIP = frozenset({int, str, bool})


def dumps_result(value: object, type_: object) -> str:
    """Store a return value, checking that it loads back as its return annotation."""
    text = dumps(value)
    if (type(value) is type_ and type_ in _ROUND_TRIP) or _is_unchecked(type_):
        return text
    try:
        loads(text, type_)
    except SerializationError as exc:
        raise SerializationError(
            f"a value of type {type(value).__qualname__!r} does not match the return "
            f"annotation {_type_label(type_)}: {exc.__cause__ or exc}"
        ) from exc
    return text


class _Param(NamedTuple):
    """One parameter of a codec's function, with how its stored value is decoded."""

    name: str
    kind: inspect._ParameterKind
    default: Any
    type_: object


_MISSING: Any = object()


def _callable_name(fn: Callable[..., Any]) -> str:
    """Name a callable by its qualname, looking through functools.partial."""
    target = _unwrap_partial(fn)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    return name if isinstance(name, str) else repr(target)


def _unwrap_partial(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Return the function a (possibly nested) functools.partial calls."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _closure_names(fn: Callable[..., Any]) -> dict[str, Any]:
    """The free variables a function closes over, by name."""
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    names: dict[str, Any] = {}
    if code is None:
        return names
    for name, cell in zip(code.co_freevars, cells, strict=False):
        with contextlib.suppress(ValueError):  # an empty cell
            names[name] = cell.cell_contents
    return names


def _hints_one_by_one(
    fn: Callable[..., Any], localns: dict[str, Any], qualname: str
) -> dict[str, Any]:
    """Resolve each annotation alone, so that one bad name does not lose them all."""
    annotations = getattr(fn, "__annotations__", None) or {}
    globalns = getattr(fn, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in annotations.items():
        try:
            holder = types.SimpleNamespace(__annotations__={name: annotation})
            hints[name] = typing.get_type_hints(
                holder, globalns=globalns, localns=localns, include_extras=True
            )[name]
        except Exception as exc:
            label = "the return annotation" if name == "return" else f"parameter {name!r}"
            warnings.warn(
                f"{qualname}: {label} ({annotation!r}) cannot be resolved ({exc}); its "
                "stored values will load back as plain JSON. Declare the type at module "
                "level or import it where the function is declared.",
                stacklevel=2,
            )
    return hints


class ArgumentCodec:
    """Store a function's call arguments as JSON and rebuild them, typed by its annotations.

    The signature is read when the codec is made; the type hints are resolved once, on
    first use, so that annotations may name classes defined after the function.
    """

    def __init__(self, fn: Callable[..., Any], *, localns: dict[str, Any] | None = None) -> None:
        self.fn = fn
        self.qualname = _callable_name(fn)
        self.signature = inspect.signature(fn)
        self._localns = localns

    @functools.cached_property
    def _hints(self) -> dict[str, Any]:
        """Resolved annotations. Names are looked up in the function's module, in the scope
        that declared it (a class defined inside a function) and in its closure. An
        annotation that still cannot be resolved decodes as plain JSON, with a warning."""
        target = _unwrap_partial(self.fn)
        localns = dict(self._localns or {})
        localns.update(_closure_names(target))
        try:
            return typing.get_type_hints(target, localns=localns, include_extras=True)
        except Exception:  # one unresolvable name: resolve the others one by one
            return _hints_one_by_one(target, localns, self.qualname)

    @property
    def hints(self) -> dict[str, Any]:
        """The function's resolved annotations, by parameter name (and ``return``)."""
        return self._hints

    @property
    def return_type(self) -> Any:
        """The return annotation (``NoneType`` for ``-> None``), or ``Any`` when missing."""
        return self._hints.get("return", Any)

    @functools.cached_property
    def _params(self) -> tuple[_Param, ...]:
        """Each parameter with the type its stored value decodes as."""
        params = []
        for param in self.signature.parameters.values():
            hint = self._hints.get(param.name, Any)
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                hint = list[hint]  # type: ignore[valid-type]
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                hint = dict[str, hint]  # type: ignore[valid-type]
            params.append(_Param(param.name, param.kind, param.default, hint))
        return tuple(params)

    @functools.cached_property
    def _positional_names(self) -> tuple[str, ...] | None:
        """The parameter names when each is plain positional-or-keyword (else None)."""
        parameters = self.signature.parameters.values()
        if all(param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for param in parameters):
            return tuple(param.name for param in parameters)
        return None

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map each parameter name to its value, defaults applied; TypeError if they do not fit."""
        names = self._positional_names
        if not kwargs and names is not None and len(args) == len(names):
            return dict(zip(names, args, strict=True))  # what Signature.bind gives, cheaper
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"cannot call {self.qualname}: {exc}") from exc
        bound.apply_defaults()
        return dict(bound.arguments)

    def encode(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Store a call's arguments; positional and keyword calls give the same text."""
        return dumps(self.bind(args, kwargs))

    def encode_bound(self, bound: dict[str, Any]) -> str:
        """Store arguments already bound by :meth:`bind`."""
        return dumps(bound)

    def decode(self, data: str | bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Rebuild ``(args, kwargs)`` from stored arguments, each decoded by its annotation."""
        stored = self._load_object(data)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param in self._params:
            raw = stored.pop(param.name, _MISSING)
            if raw is _MISSING:
                if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                    continue
                if param.default is inspect.Parameter.empty:
                    raise SerializationError(
                        f"stored arguments for {self.qualname} have no value for the "
                        f"required parameter {param.name!r}"
                    )
                if param.kind is not inspect.Parameter.KEYWORD_ONLY:
                    args.append(param.default)
                continue
            value = self._decode_param(param, raw)
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif param.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[param.name] = value
            else:
                args.append(value)
        if stored:
            names = ", ".join(repr(name) for name in stored)
            raise SerializationError(
                f"stored arguments for {self.qualname} name an unknown parameter {names}"
            )
        return tuple(args), kwargs

    def _load_object(self, data: str | bytes) -> dict[str, msgspec.Raw]:
        """Split stored arguments into one undecoded JSON value per parameter name."""
        try:
            return _RAW_OBJECT_DECODER.decode(data)
        except _CODEC_ERRORS as exc:
            raise SerializationError(
                f"stored arguments for {self.qualname} are not a JSON object: {exc}"
            ) from exc

    def _decode_param(self, param: _Param, raw: msgspec.Raw) -> Any:
        """Decode one parameter's stored value, naming the parameter on failure."""
        try:
            return loads(raw, param.type_)
        except SerializationError as exc:
            raise SerializationError(
                f"cannot load argument {param.name!r} of {self.qualname}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"ArgumentCodec({self.qualname}{self.signature})"


_RAW_OBJECT_DECODER: msgspec.json.Decoder[dict[str, msgspec.Raw]] = msgspec.json.Decoder(
    dict[str, msgspec.Raw]
)


def _safe_str(exc: BaseException) -> str:
    """``str(exc)``, even for exceptions whose ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__qualname__}>"


def _storable_args(exc: BaseException) -> list[Any] | None:
    """The exception's args as they will load back from JSON, or None if they cannot be stored."""
    try:
        return list(loads(dumps(list(exc.args))))
    except SerializationError:
        return None


def error_to_record(exc: BaseException) -> dict[str, Any]:
    """Describe an exception as a JSON-ready record that :func:`error_from_record` replays."""
    text = "".join(traceback.format_exception(exc))
    if isinstance(exc, StoredError):
        # A replayed stand-in: keep the original class name and message, not the stand-in's.
        return {
            "type": exc.type_name,
            "message": exc.error_message,
            "args": None,
            "traceback": text,
            "permanent": isinstance(exc, Permanent),
        }
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": _safe_str(exc),
        "args": _storable_args(exc),
        "attrs": _storable_attrs(exc),
        "traceback": text,
        "permanent": isinstance(exc, Permanent),
    }


def _storable_attrs(exc: BaseException) -> dict[str, Any] | None:
    """The exception's own attributes (``self.code = ...``) that JSON can carry."""
    attrs: dict[str, Any] = {}
    for name, value in vars(exc).items():
        if name.startswith("__") or name == "remote_traceback":
            continue
        try:
            attrs[name] = loads(dumps(value))
        except SerializationError:
            continue
    return attrs or None


def _find_class(dotted: str) -> type[BaseException] | None:
    """Find ``module.QualName`` among the modules already imported, longest prefix first.

    Nothing is imported on behalf of a stored row: loading stays free of side effects.
    """
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        obj: Any = sys.modules.get(".".join(parts[:split]))
        if obj is None:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except Exception:
            return None
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj
        return None
    return None


def _rebuild(type_name: str, args: Any, attrs: Any, permanent: bool) -> BaseException | None:
    """Rebuild the recorded class from its stored args and attributes, or None.

    The constructor is not called: an exception whose ``__init__`` takes other arguments
    than its ``args`` (``PaymentError(code, reason)``) comes back all the same.
    """
    if not isinstance(args, list):
        return None
    cls = _find_class(type_name)
    if cls is None or issubclass(cls, Permanent) != permanent:
        return None
    try:
        exc = cls.__new__(cls, *args)
        exc.args = tuple(args)
        if isinstance(attrs, dict):
            for name, value in attrs.items():
                setattr(exc, name, value)
    except Exception:
        return None
    return exc


def _attach_traceback(exc: BaseException, tb: str | None) -> None:
    """Show the stored traceback in the exception's notes and keep it as ``remote_traceback``."""
    if tb is not None:
        exc.add_note("stored traceback:\n" + tb)
    with contextlib.suppress(Exception):  # an exception class that refuses new attributes
        exc.remote_traceback = tb  # type: ignore[attr-defined]


def error_from_record(record: dict[str, Any]) -> BaseException:
    """Rebuild a recorded exception, or a StoredError stand-in when its class cannot be."""
    type_name = str(record.get("type") or "Exception")
    message = str(record.get("message") or "")
    stored_tb = record.get("traceback")
    tb = stored_tb if isinstance(stored_tb, str) and stored_tb else None
    permanent = bool(record.get("permanent"))
    exc = _rebuild(type_name, record.get("args"), record.get("attrs"), permanent)
    if exc is None:
        stand_in = PermanentStoredError if permanent else StoredError
        exc = stand_in(type_name, message, tb)
    _attach_traceback(exc, tb)
    return exc


def describe_error(exc: BaseException) -> str:
    """Summarise an exception as ``"TypeName: message"``."""
    if isinstance(exc, StoredError):
        return _safe_str(exc)  # already "module.TypeName: message"
    message = _safe_str(exc)
    name = type(exc).__qualname__
    return f"{name}: {message}" if message else name


__all__ = [
    "ArgumentCodec",
    "describe_error",
    "dumps",
    "dumps_result",
    "error_from_record",
    "error_to_record",
    "loads",
]
