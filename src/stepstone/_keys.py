"""Keys: job keys and memo keys, written as ``str.format`` templates or callables over a
function's bound arguments, and checked against the length every store accepts."""

from __future__ import annotations

import inspect
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InvalidKey
from .types import MAX_KEY_BYTES

_FIELD_ROOT = re.compile(r"^[^.\[]*")


def check_key(key: str, *, what: str = "key") -> str:
    """``key`` if a store can hold it; ``InvalidKey`` saying why not otherwise."""
    if not isinstance(key, str):
        raise InvalidKey(f"a {what} must be a str, not {type(key).__name__} ({key!r})")
    if not key:
        raise InvalidKey(f"a {what} must not be empty")
    if "\x00" in key:
        raise InvalidKey(
            f"{what} {key[:60]!r} holds a NUL character (\\x00), which no store can keep in "
            "text; remove it or encode the value (hex, base64) into the key"
        )
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise InvalidKey(
            f"{what} {key[:60]!r}... is {size:,} bytes long; stepstone keys hold at most "
            f"{MAX_KEY_BYTES:,} bytes (UTF-8). Keys are compared whole, never truncated: "
            "hash the long part (hashlib.sha256(...).hexdigest()) into a shorter key"
        )
    return key


class KeyTemplate:
    """A key computed from a function's arguments: a template or a callable.

    A template's fields must name the function's parameters; this is checked when the
    template is declared. A callable is called with the function's own arguments.
    """

    def __init__(
        self,
        template: str | Callable[..., str],
        fn: Callable[..., Any],
        *,
        what: str,
        skip_first: bool = False,
    ) -> None:
        self.template = template
        self.what = what
        signature = inspect.signature(fn)
        parameters = list(signature.parameters.values())
        if skip_first and parameters:
            parameters = parameters[1:]
            signature = signature.replace(parameters=parameters)
        self.signature = signature
        self.var_keyword = next(
            (p.name for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )
        if isinstance(template, str):
            self._check_fields(template, fn, [p.name for p in parameters])
        elif not callable(template):
            raise InvalidKey(
                f"{what} must be a str.format template or a callable, not {type(template).__name__}"
            )

    def _check_fields(self, template: str, fn: Callable[..., Any], names: list[str]) -> None:
        label = getattr(fn, "__qualname__", repr(fn))
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
        except ValueError as exc:
            raise InvalidKey(f"{self.what} {template!r} is not a valid template: {exc}") from exc
        for field in fields:
            match = _FIELD_ROOT.match(field)
            root = match.group(0) if match else field
            if not root or root.isdigit():
                raise InvalidKey(
                    f"{self.what} {template!r} uses a positional field {{{field}}}; name the "
                    f"parameter instead, one of {names}"
                )
            if root not in names and self.var_keyword is None:
                raise InvalidKey(
                    f"{self.what} {template!r} names {{{root}}}, but {label}() has no "
                    f"parameter {root!r}; its parameters are {names}"
                )

    def render(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """The key for one call."""
        if isinstance(self.template, str):
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"cannot compute the {self.what}: {exc}") from exc
            bound.apply_defaults()
            values = dict(bound.arguments)
            if self.var_keyword is not None:
                values.update(values.pop(self.var_keyword, {}))
            try:
                key = self.template.format_map(values)
            except (KeyError, IndexError, AttributeError, ValueError) as exc:
                raise InvalidKey(
                    f"{self.what} {self.template!r} cannot be filled in from "
                    f"{values!r}: {type(exc).__name__}: {exc}"
                ) from exc
        else:
            key = self.template(*args, **kwargs)
        return check_key(key, what=self.what)


__all__ = ["KeyTemplate", "check_key"]
