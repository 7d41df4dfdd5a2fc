"""House rules, read from the sources without running them: imports sit at the top of
their module except the heavy or optional dependencies that ``allam_jax/core/optional_deps.py`` names, programs
are compiled through the partitioner, and no function is longer than 80 lines."""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

from allam_jax.core.optional_deps import OPTIONAL_DEPS, is_optional

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "allam_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in SOURCES.items()}


def _imported(node: ast.AST, module: str) -> list[str]:
    """The modules an import statement loads (``from pkg import mod`` loads ``pkg.mod`` when it is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = module.split(".") if SOURCES[module].name == "__init__.py" else module.split(".")[:-1]
    base = node.module if node.level == 0 else ".".join(
        package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    own = base.split(".")[0] == "allam_jax"
    return [base] + [f"{base}.{a.name}" for a in node.names if not own or f"{base}.{a.name}" in SOURCES]


def _top_level_imports(module: str) -> set[str]:
    found = set()
    for statement in TREES[module].body:  # module level, under `try` and `if` too (not inside functions)
        for node in ast.walk(statement):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                break
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(_imported(node, module))
    parts = module.split(".")
    found.update(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b first
    return found


@functools.lru_cache(maxsize=None)
def _optional_reached(module: str) -> str | None:
    """The optional dependency importing ``module`` loads (through top-level imports), or None."""
    return _reached(module, {})


def _reached(module: str, memo: dict) -> str | None:
    if is_optional(module):
        return module
    if module not in SOURCES or module in memo:
        return memo.get(module)
    memo[module] = None  # an import cycle adds nothing
    memo[module] = next((found for dep in sorted(_top_level_imports(module)) if (found := _reached(dep, memo))),
                        None)
    return memo[module]


def _function_imports(module: str):
    """(line, modules, inside a try) for each import inside a function of ``module``."""
    def walk(node, in_function, in_try):
        for child in ast.iter_child_nodes(node):
            function = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            guarded = in_try or (in_function and isinstance(child, ast.Try))
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child.lineno, _imported(child, module), in_try
            yield from walk(child, function, guarded)
    yield from walk(TREES[module], False, False)


def test_imports_inside_functions_are_only_of_heavy_or_optional_dependencies():
    misplaced = []
    for module in SOURCES:
        for line, modules, guarded in _function_imports(module):
            if not guarded and not any(_optional_reached(m) for m in modules):
                misplaced.append(f"{SOURCES[module].relative_to(PACKAGE.parent)}:{line} imports {modules[-1]}")
    assert not misplaced, ("move these imports to the top of their module, or name the heavy dependency in "
                           "allam_jax/core/optional_deps.py:\n" + "\n".join(misplaced))


def _closure(module: str) -> set[str]:
    """Every module that importing ``module`` loads through top-level imports (ours and the first foreign one)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(_top_level_imports(name)) if name in SOURCES else []
    return seen


@pytest.mark.parametrize("entry", ["allam_jax.cli.main", "allam_jax.gin_setup", "allam_jax.model"])
def test_entry_points_load_no_optional_dependency(entry):
    """The command line (every command's parser), gin's registration and the model load none of them."""
    assert not [m for m in _closure(entry) if m != entry and is_optional(m)]


def test_the_package_and_the_entry_point_load_no_jax():
    """``allam`` restarts itself once (huge-page malloc) before the command line loads: what it imports before that
    (the package, ``launch.py``) must not load JAX, or every command pays for it twice."""
    for module in ("allam_jax", "allam_jax.launch"):
        assert not [m for m in _closure(module) if m.split(".")[0] in ("jax", "jaxlib", "flax", "numpy")], module


def test_the_checker_sees_what_it_should():
    """The analysis itself: a module that imports Orbax at its top carries it, the table's names are modules."""
    assert _optional_reached("allam_jax.checkpoint.regular") == "orbax.checkpoint"
    assert _optional_reached("allam_jax.runner") is not None  # the trainer loads Orbax
    assert _optional_reached("allam_jax.core.errors") is None
    assert all(name.replace(".", "").replace("_", "").isalnum() for name in OPTIONAL_DEPS)


def test_programs_are_compiled_through_the_partitioner():
    """One jit path: ``Partitioner.jit`` (or ``jit_on``, which is it, or plain jit for one device without a mesh);
    a bare ``jax.jit`` elsewhere would run outside the mesh and the sharding rules."""
    bare = [f"{SOURCES[m].relative_to(PACKAGE.parent)}:{node.lineno}" for m, tree in TREES.items()
            if m != "allam_jax.core.partitioning" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "jit" and isinstance(node.value, ast.Name)
            and node.value.id == "jax"]
    assert not bare, "use Partitioner.jit or jit_on: " + ", ".join(bare)


def test_no_function_is_longer_than_80_lines():
    long = [f"{SOURCES[m].relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
            for m, tree in TREES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, "split these functions: " + ", ".join(long)
