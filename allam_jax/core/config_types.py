"""Every gin-bound value checked against its field's type hint, before anything is built.

A config class checks the ranges it knows (``num_layers >= 1``); the type of every field is checked here, once
for all classes, from the annotations they already carry: ``TrainerConfig.num_steps = 'abc'`` or
``HeldoutWatch.paths = 5`` is one line naming the field instead of a ``TypeError`` from deep inside the run.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import types
import typing
from typing import Any, Callable, Iterator, Optional

from allam_jax.core.errors import ConfigError

_SEQUENCES = (list, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping)


def type_hints(target: Callable) -> dict[str, Any]:
    """Parameter name -> type hint of a config class (its fields) or a configurable function; names whose hint
    cannot be resolved are left out (not checked)."""
    obj = target if not inspect.isclass(target) or dataclasses.is_dataclass(target) else target.__init__
    try:
        return {k: v for k, v in typing.get_type_hints(obj).items() if k != "return"}
    except Exception:  # noqa: BLE001 - a hint only TYPE_CHECKING imports: check the ones that resolve
        raw = getattr(obj, "__annotations__", {})
        out = {}
        for name, text in raw.items():
            if name == "return":
                continue
            try:
                out[name] = typing.get_type_hints(type("_", (), {"__annotations__": {name: text},
                                                                  "__module__": obj.__module__}))[name]
            except Exception:  # noqa: BLE001
                continue
        return out


def _is_reference(value: Any) -> bool:
    """gin's ``@Name()`` and ``%MACRO``: built and checked where they are configured, not here."""
    return type(value).__module__.startswith("gin")


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a gin literal) can be a value of ``hint``. Forms of hint not listed pass."""
    if _is_reference(value) or hint in (Any, object):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin is tuple or hint is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args)))
    if origin in _SEQUENCES or hint in (list, collections.abc.Sequence):
        if isinstance(value, str):  # a single name where a list of names is expected: the classes accept it
            return not args or matches(value, args[0])
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if origin in _MAPPINGS or hint in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and (not args or all(matches(k, args[0]) and matches(v, args[1])
                                                            for k, v in value.items()))
    if inspect.isclass(hint) and hint.__module__ != "builtins" and origin is None:
        return isinstance(value, hint)
    return True


def describe(hint: Any) -> str:
    """A hint in a user's words: ``Optional[int]`` -> 'an integer or None'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple or origin in _SEQUENCES:
        return "a list" + (f" of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "")
    if origin in _MAPPINGS:
        return f"a dict of {describe(args[0])} -> {describe(args[1])}" if args else "a dict"
    return {type(None): "None", bool: "True or False", int: "an integer", float: "a number", str: "a string",
            }.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _value_text(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bad_bindings(bindings: dict[tuple[str, str], dict[str, Any]],
                 find: Callable[[str], Optional[tuple[str, Callable]]]) -> Iterator[str]:
    """One message per bound value whose type does not fit its parameter; ``bindings`` is gin's
    ``{(scope, selector): {param: value}}`` and ``find(selector)`` gives (name, class or function)."""
    for (scope, selector), params in bindings.items():
        found = find(selector)
        if found is None:
            continue
        name, target = found
        hints = type_hints(target)
        for param, value in params.items():
            where = f"{scope + '/' if scope else ''}{name}.{param}"
            if isinstance(value, float) and not math.isfinite(value):
                yield f"{where} must be a finite number, got {value}"
            elif param in hints and not matches(value, hints[param]):
                yield f"{where} must be {describe(hints[param])}, got {_value_text(value)}"


def check_bindings(bindings: dict, find: Callable[[str], Optional[tuple[str, Callable]]]) -> None:
    """Raises a ConfigError naming the first bound value of the wrong type."""
    for message in bad_bindings(bindings, find):
        raise ConfigError(message)
