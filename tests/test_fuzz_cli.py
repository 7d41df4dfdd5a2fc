"""Issue 44: generated bad values for every ``allam`` flag and every field of every gin-configurable class.

Hypothesis draws the values (wrong type, out of range, empty, huge, NaN/inf, unpaired surrogates standing for
non-UTF-8 bytes, unbalanced quotes and brackets); ``derandomize=True`` makes every run draw the same ones, and a
failure prints the falsifying example (``reproduce_failure`` blob included) to rerun it alone. Bounded: about a
minute on the 2-core CI machine.

What must hold: a flag value its type refuses is exit 2 and one line naming the flag (before any work); a gin
value is accepted or refused by a ConfigError naming ``Class.field`` (never another exception); a value whose
Python type cannot be the field's (a string for an integer, a list for a float, NaN anywhere) is refused; through
``allam train``, such a value is exit 2, one line, and the workdir is not created.
"""

from __future__ import annotations

import argparse
import math
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allam_jax import gin_setup
from allam_jax.cli.main import build_parser, main
from allam_jax.core.errors import ConfigError

SETTINGS = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ---- the command line ---------------------------------------------------------------------------------------------

def _flags() -> list[tuple[tuple[str, ...], argparse.Action]]:
    """(sub-command path, action) of every flag that converts or restricts its value."""
    out = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:  # noqa: SLF001 - argparse keeps them here
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, child in action.choices.items():
                    walk(child, path + (name,))
            elif action.option_strings and (action.type is not None or action.choices):
                out.append((path, action))

    walk(build_parser(), ())
    return out


FLAGS = _flags()
BAD_TEXT = st.one_of(
    st.sampled_from(["", "abc", "1.5", "nan", "-nan", "inf", "-inf", "1e999", "-1", "0", "9" * 40, "-" + "9" * 40,
                     "0x10", "1_000", "'", '"', "(", "\udcff", "\x00", " ", "True"]),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _accepted(action: argparse.Action, text: str):
    """The value argparse would keep, or raise as argparse would refuse it."""
    value = action.type(text) if action.type is not None else text
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{value!r} not in choices")
    return value


def test_every_restricted_flag_is_found():
    names = {(" ".join(path), a.option_strings[-1]) for path, a in FLAGS}
    assert {("compile", "--num_slices"), ("generate", "--seed"), ("tokenizer train", "--vocab_size"),
            ("train", "--distributed_timeout"), ("", "--log_level")} <= names
    assert not [(p, a.dest) for p, a in FLAGS if a.type in (int, float)], "a flag of bare int/float has no range"


@pytest.mark.slow
@SETTINGS
@given(index=st.integers(0, len(FLAGS) - 1), text=BAD_TEXT)
def test_a_bad_flag_value_is_one_line_naming_the_flag(index, text, capsys):
    path, action = FLAGS[index]
    flag = action.option_strings[-1]
    try:
        value = _accepted(action, text)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        value = None
    else:  # what a type accepts is in range: never NaN, inf or beyond what the device and the generators take
        if isinstance(value, float):
            assert math.isfinite(value) and abs(value) < 2**31, (flag, text)
        elif isinstance(value, int):
            assert 0 <= value < 2**32, (flag, text)
        return
    argv = [*path, f"{flag}={text}"] if path else [f"{flag}={text}", "info"]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert stopped.value.code == 2 and len(err) == 1, (argv, err)
    assert err[0].startswith("allam: error:") and f"argument {action.option_strings[0]}" in err[0] or flag in err[0]


# ---- gin fields ---------------------------------------------------------------------------------------------------

def _configurables() -> dict[str, tuple[typing.Callable, dict[str, typing.Any]]]:
    """name -> (class or function, parameter -> hint) of every configurable this project registers."""
    from allam_jax.core.config_types import type_hints
    from allam_jax.reference import configurables

    return {name: (target, type_hints(target)) for name, target in configurables().items()}


CONFIGURABLES = _configurables()
FIELDS = sorted((name, param) for name, (_, hints) in CONFIGURABLES.items() for param in hints)
BUILDABLE = {name for name, (target, _) in CONFIGURABLES.items() if isinstance(target, type)}

LITERALS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.booleans(), st.none(), st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
    st.tuples(st.integers(-3, 3), st.text(max_size=2)),
)


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", type(None): "none", list: "seq", tuple: "seq",
            dict: "map"}[type(value)]


def _must_refuse(value, hint) -> bool:
    """The test's own oracle: a value whose kind no plain hint of this field takes (NaN and inf: never)."""
    if isinstance(value, float) and not math.isfinite(value):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    options = [a for a in args if a is not type(None)] if origin is typing.Union else [hint]
    allowed = {"none"} if origin is typing.Union and type(None) in args else set()
    for option in options:
        plain = typing.get_origin(option) or option
        allowed |= {int: {"int"}, float: {"int", "float"}, str: {"str"}, bool: {"bool"}}.get(plain, set())
        if plain in (list, tuple, typing.Sequence, __import__("collections.abc").abc.Sequence):
            allowed |= {"seq", "str"}
        if plain in (dict, typing.Mapping, __import__("collections.abc").abc.Mapping):
            allowed |= {"map"}
        if plain not in (int, float, str, bool, list, tuple, dict) and not allowed & {"seq", "map"}:
            return False  # a class or an unusual hint: no opinion
    return _kind(value) not in allowed


def test_every_configurable_field_is_found():
    assert len(FIELDS) > 150 and ("ModelConfig", "vocab_size") in FIELDS and ("SftData", "epochs") in FIELDS


@SETTINGS
@given(index=st.integers(0, len(FIELDS) - 1), value=LITERALS)
def test_a_gin_value_is_accepted_or_refused_by_field_name(index, value):
    name, param = FIELDS[index]
    target, hints = CONFIGURABLES[name]
    binding = f"{name}.{param} = {value!r}"
    where = f"{name}.{param}"
    try:
        gin_setup.parse([], [binding])
        if name in BUILDABLE:
            gin_setup.build(target)
    except ConfigError as e:
        message = str(e).splitlines()[0]
        assert where in message or param in message, (binding, message)
        return
    assert not _must_refuse(value, hints[param]), f"{binding} was accepted"


GARBAGE = st.text(alphabet=st.sampled_from("'\"()[]{}@%,:=\\ #\n\t\udcffabc019.-eE"), max_size=12)


@SETTINGS
@given(index=st.integers(0, len(FIELDS) - 1), text=GARBAGE)
def test_garbage_gin_text_is_a_config_error(index, text):
    """Unbalanced quotes and brackets, stray references and bytes that are not UTF-8: parsed or refused in one
    ConfigError, never another exception."""
    name, param = FIELDS[index]
    try:
        gin_setup.parse([], [f"{name}.{param} = {text}"])
    except ConfigError as e:
        assert len(str(e).splitlines()) >= 1


@settings(SETTINGS, max_examples=12)
@given(index=st.sampled_from([i for i, (n, _) in enumerate(FIELDS)
                              if n in ("ModelConfig", "TrainerConfig", "OptimizerConfig", "TextFileData")]),
       value=LITERALS)
def test_through_allam_train_a_refused_value_is_exit_2_and_writes_nothing(index, value, tmp_path_factory, capsys):
    name, param = FIELDS[index]
    if not _must_refuse(value, CONFIGURABLES[name][1][param]):
        return
    work = tmp_path_factory.mktemp("fuzz") / "w"
    rc = main(["train", "--gin_file", "runs/tiny_cpu.gin", "--workdir", str(work), "--gin_bindings",
               f"{name}.{param} = {value!r}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and f"{name}.{param}" in err[0], err
    assert not work.exists()
