"""A recipe's values against the types of the dataclass fields they fill, checked before anything loads: TrlParser
puts YAML values in as argparse defaults, which argparse never converts or checks, so `lora_r: 8.5` would otherwise
reach PEFT as a float and fail after the model has loaded.

    from medreason.fieldtypes import check_types, type_problem
    type_problem(int, 8.5)                          # 'an integer'
    type_problem(list[str], ["q_proj", 3])          # 'a list of strings'
    check_types(path, {"lora_r": 8.5}, classes)     # UserError: <path>: lora_r must be an integer, got 8.5

medreason.config calls `check_types` on every recipe file with the classes of its trainer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medreason.compat import TYPE_WORDS
from medreason.errors import UserError


def check_types(path: Path, data: dict, classes):
    """Each recipe value against the type of its field in `classes`: the first that does not fit is a UserError
    naming the file, the key, what the value should be and what it was."""
    import typing

    hints = {}
    for cls in classes:
        resolved = typing.get_type_hints(cls)
        hints.update({f.name: resolved[f.name] for f in dataclasses.fields(cls)})
    for key, value in data.items():
        if key in hints:
            problem = type_problem(hints[key], value)
            if problem:
                raise UserError(f"{path}: {key} must be {problem}, got {value!r}")


def type_problem(kind, value) -> str | None:
    """What `value` should have been for a field of type `kind`, or None when it fits (or the type is one
    this does not judge: dicts, configs of other libraries)."""
    import enum
    import types
    import typing

    origin, targs = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in targs:
            return None
        rest = [a for a in targs if a is not type(None)]
        enums = [a for a in rest if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and str in rest and len(rest) == 2:  # `SchedulerType | str`: the enum's values, as HF's parser
            kind, rest = enums[0], [enums[0]]
        if len(rest) != 1:
            return None  # `str | bool`, `dict | str`: several kinds are fine
        kind = rest[0]
        origin, targs = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        return None if value in targs else "one of " + ", ".join(map(str, targs))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = [m.value for m in kind]
        return None if value in choices else "one of " + ", ".join(map(str, choices))
    if origin is list:
        items = value if isinstance(value, list) else [value]  # one name for a list: train.py makes it a list
        inner = targs[0] if targs else None
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        if inner in plural and any(type_problem(inner, v) for v in items):
            return f"a list of {plural[inner]}"
        return None
    if kind is bool:
        return None if isinstance(value, bool) else TYPE_WORDS["bool"]
    if kind is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else TYPE_WORDS["int"]
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if isinstance(value, str):  # `2e-5`: a string to YAML 1.1, a number to the user
            try:
                float(value)
                return None
            except ValueError:
                pass
        return TYPE_WORDS["float"]
    if kind is str:
        return None if isinstance(value, str) else TYPE_WORDS["str"] + " (quote it)"
    return None
