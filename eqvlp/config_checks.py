"""The checks every eqvlp config dataclass runs first in `__post_init__`: `check_fields(self)`.

Configs are frozen dataclasses whose fields are annotated with their types, so one generic
check covers them all instead of a hand-written test per field:

- a `Literal[...]` field (or `Literal[...] | None`) must hold one of its values:
  `ViTConfig(position_embedding="Learned")` is an error naming the valid values and the close
  match, never a silent fall-through to another branch;
- a NumPy integer in an `int` field becomes a Python `int` (sizes computed with NumPy are
  welcome; `isinstance(x, int)` checks further down, and JSON, then see plain ints).

`replace(config, **changes)` is `dataclasses.replace` with an error that lists the valid fields
when a name is misspelt.
"""

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Literal

import numpy as np

__all__ = ["check_fields", "replace"]


def check_fields(config: Any) -> None:
    """Validates the `Literal` fields of a config dataclass and turns NumPy ints into ints.

    **Arguments:**

    - `config`: a dataclass instance (frozen or not); called from its `__post_init__`.

    **Raises:** `ValueError` naming the class, the field, the valid values and the closest one.
    """
    cls = type(config)
    for name, (choices, takes_int) in _field_kinds(cls).items():
        value = getattr(config, name)
        if takes_int and isinstance(value, np.integer):
            object.__setattr__(config, name, int(value))
            continue
        if choices is not None and not any(_same(value, c) for c in choices):
            raise ValueError(_choice_error(cls.__name__, name, value, choices))


def replace(config: Any, where: str = "", **changes) -> Any:
    """`dataclasses.replace` whose error for an unknown field lists the valid ones.

    `where` names the caller in the message (e.g. `"create('clip-tiny')"`).
    """
    names = [f.name for f in dataclasses.fields(config) if f.init]
    unknown = [k for k in changes if k not in names]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        prefix = f"{where}: " if where else ""
        raise TypeError(
            f"{prefix}{type(config).__name__} has no field {', '.join(hints)}: the fields are "
            f"{', '.join(names)}"
        )
    return dataclasses.replace(config, **changes)


def _same(value: Any, choice: Any) -> bool:
    # Not plain `==`: `True == 1` and `1.0 == 1`, but a Literal value must have its own type.
    if choice is None:
        return value is None
    if isinstance(choice, str):
        return isinstance(value, str) and value == choice
    return type(value) is type(choice) and value == choice


def _choice_error(cls_name: str, name: str, value: Any, choices: tuple) -> str:
    shown = [repr(c) for c in choices]
    listed = " or ".join(shown) if len(shown) <= 2 else ", ".join(shown[:-1]) + " or " + shown[-1]
    strings = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(str(value).lower(), strings, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {name} {value!r} for {cls_name}.{name}{hint}: use {listed}"


@functools.cache
def _field_kinds(cls: type) -> dict[str, tuple[tuple | None, bool]]:
    """Per init field: its Literal values (None included if optional), and whether it takes int."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        hint = hints.get(field.name, Any)
        members = _union_members(hint)
        literals = [m for m in members if typing.get_origin(m) is Literal]
        choices = None
        if literals and all(typing.get_origin(m) is Literal or m is type(None) for m in members):
            choices = tuple(v for m in literals for v in typing.get_args(m))
            if type(None) in members:
                choices = choices + (None,)
        takes_int = int in members and bool not in members
        if choices is not None or takes_int:
            out[field.name] = (choices, takes_int)
    return out


def _union_members(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
