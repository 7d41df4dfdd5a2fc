"""The documentation: the README fits a screen, the MkDocs site builds with ``--strict`` (broken links and anchors
fail), every ``allam`` command has its section and every gin configurable and field its reference entry."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from allam_jax import reference

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _headings(page: str) -> list[str]:
    text = re.sub(r"```.*?```", "", (ROOT / "docs" / page).read_text(encoding="utf-8"), flags=re.S)
    return [h.replace("`", "") for h in re.findall(r"^#{1,6} (.*)$", text, flags=re.M)]


def test_readme_fits_a_screen_and_names_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("allam recipe --workdir=runs/recipe", "python -m pytest -q"):  # CI's main job and tests
        assert command in readme and command in ci


@pytest.mark.slow
def test_every_command_has_a_section_and_a_flag_table(site):
    headings = _headings("commands.md")
    flags = (site / "flags" / "index.html").read_text(encoding="utf-8")
    commands = list(reference.commands())
    assert len(commands) >= 19
    for command, parser in commands:
        words = command.split()
        assert any(" ".join(words[:2]) in h and all(w in h for w in words[2:]) for h in headings), command
        assert f"<code>{command}</code>" in flags, command
        for action in parser._actions:  # noqa: SLF001
            if action.option_strings and action.option_strings[0] != "-h":
                assert f"<code>{action.option_strings[0]}" in flags, (command, action.option_strings)


@pytest.mark.slow
def test_every_gin_configurable_and_field_is_in_the_reference(site):
    page = (site / "config-reference" / "index.html").read_text(encoding="utf-8")
    table = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    from allam_jax.core.config_types import type_hints

    found = reference.configurables()
    assert {"ModelConfig", "TrainerConfig", "SeqioData", "CachedData", "DpoConfig", "RecipeConfig"} <= set(found)
    for name, target in found.items():
        assert f'id="{name.lower()}"' in page, name
        assert f"`{name}" in table, f"docs/configuration.md's table has no row for {name}"
        for field in type_hints(target):
            assert f"<code>{name}.{field}</code>" in page, (name, field)


def test_generated_reference_reads_field_comments():
    """The notes column is the field's own comment in the source: the text a reader needs, not a copy."""
    text = reference.config_reference()
    assert re.search(r"`TrainerConfig.grad_accum_steps` \|.*\| `1` \| the step's batch in this many micro-batches", text)
    assert "| `CachedData.block_rows` | an integer | `1024` | rows per allocation block" in text
    assert "| `StepConfig.grad_accum_steps` | `TrainerConfig.grad_accum_steps" in text  # the former spellings table
