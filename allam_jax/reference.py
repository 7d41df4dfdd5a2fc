"""The generated reference pages of the documentation (``docs/hooks.py`` fills them at build time): every gin
configurable with its fields, hints, defaults and comments, and every ``allam`` command with its flags. Read
from the code itself, so the documentation cannot drift from it."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from typing import Any, Callable, Iterator, Optional

from allam_jax import gin_setup
from allam_jax.cli.main import build_parser
from allam_jax.core.config_types import describe, type_hints
from allam_jax.recipe.config import HeldoutConfig, RecipeConfig


def configurables() -> dict[str, Callable]:
    """Name -> class (or function) of every configurable the project registers, the lazily registered seqio
    ones and the recipe's and objectives' configs included."""
    return gin_setup.configurables(RecipeConfig, HeldoutConfig)


def commands(parser: Optional[argparse.ArgumentParser] = None,
             prefix: str = "allam") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(full command, parser) of every leaf ``allam`` subcommand, in the order ``--help`` lists them."""
    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    if not subs:
        yield prefix, parser
        return
    for name, child in subs[0].choices.items():
        yield from commands(child, f"{prefix} {name}")


def _field_comments(cls: type) -> dict[str, str]:
    """Field -> the comment on its line, or the comment lines right above it, in the class's source."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    body = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = body[node.lineno - 1]
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            above, i = [], node.lineno - 2
            while i >= 0 and body[i].strip().startswith("#"):
                above.insert(0, body[i].strip().lstrip("#").strip())
                i -= 1
            out[node.target.id] = " ".join(above + ([trailing] if trailing else []))
    return out


def _default(target: Callable, name: str) -> str:
    if dataclasses.is_dataclass(target):
        field = {f.name: f for f in dataclasses.fields(target)}[name]
        if field.default is not dataclasses.MISSING:
            return repr(field.default)
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            return repr(field.default_factory())  # type: ignore[misc]
        return "required"
    param = inspect.signature(target).parameters[name]
    return "required" if param.default is inspect.Parameter.empty else repr(param.default)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """Markdown: a section per configurable, a table row per field."""
    out = []
    for name, target in sorted(configurables().items()):
        doc = " ".join((inspect.getdoc(target) or "").split("\n\n")[0].split())
        comments = _field_comments(target) if inspect.isclass(target) else {}
        out += [f"## {name}", "", f"`{target.__module__}.{target.__qualname__}`" + (f": {doc}" if doc else ""), "",
                "| field | type | default | notes |", "|---|---|---|---|"]
        for field, hint in type_hints(target).items():
            out.append(f"| `{name}.{field}` | {_cell(describe(hint))} | `{_cell(_default(target, field))}` | "
                       f"{_cell(comments.get(field, ''))} |")
        out.append("")
    out += ["## Former spellings", "", "Still read, so older configs keep working; write the replacement in new ones.",
            "", "| former | write instead |", "|---|---|"]
    out += [f"| `{_cell(old)}` | `{_cell(new)}` |" for old, new in gin_setup.LEGACY_SPELLINGS.items()]
    return "\n".join(out) + "\n"


def flags_reference() -> str:
    """Markdown: a section per ``allam`` command with its description and a table row per flag."""
    out = []
    for command, parser in commands():
        out += [f"## `{command}`", "", _cell(parser.description or "").strip(), "", "| flag | default | help |",
                "|---|---|---|"]
        for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:  # noqa: SLF001
                continue
            flag = ", ".join(action.option_strings) or action.dest
            default = "" if action.default in (None, argparse.SUPPRESS) else f"`{_cell(action.default)}`"
            out.append(f"| `{flag}` | {default} | {_cell(action.help or '')} |")
        out.append("")
    return "\n".join(out)
