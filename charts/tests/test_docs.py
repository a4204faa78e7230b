"""Every `helm install` and `helm upgrade` of this chart in README.md and docs/ works as
written: its `--set` flags parsed as Helm parses them (one map, in order), its `-f` files read,
the values validated by values.schema.json and the chart rendered. A command that upgrades
with `--reuse-values` starts from the values of an install (the required ones).
"""

from __future__ import annotations

import copy
import re
import shlex

import jsonschema
import pytest

from conftest import REPO, chart, load_values, render, required_values
from test_values import SCHEMA

DOCS = [REPO / "README.md", REPO / "charts" / "herald" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"\bhelm (install|upgrade) \S+ (\./)?charts/herald\b.*")


def commands() -> list:
    found = []
    for path in DOCS:
        # A command continued over several lines is one line here.
        text = path.read_text().replace("\\\n", " ")
        for match in COMMAND.finditer(text):
            line = match.group(0)
            found.append(pytest.param(line, id=f"{path.name}:{len(found)}"))
    return found


def random_hex(match: re.Match) -> str:
    """`$(openssl rand -hex N)` as the shell would give it: 2N hex digits."""
    return ("0123456789abcdef" * 16)[: 2 * int(match.group(1))]


def deep_merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def values_of(line: str) -> dict:
    import helm_python as helm

    line = re.sub(r"\$\(openssl rand -hex (\d+)\)", random_hex, line)
    words = shlex.split(line.split("#", 1)[0])
    sets, strings, files, reuse = [], [], [], False
    i = 0
    while i < len(words):
        word = words[i]
        flag, _, inline = word.partition("=")
        if flag in ("--set", "--set-string", "-f", "--values"):
            value = inline if inline else words[i + 1]
            i += 0 if inline else 1
            {"--set": sets, "--set-string": strings}.get(flag, files).append(value)
        elif word == "--reuse-values":
            reuse = True
        i += 1
    values = required_values() if reuse else {}
    for path in files:
        deep_merge(values, load_values(REPO / path))
    if sets:
        deep_merge(values, helm.parse_set_string(",".join(sets)))
    if strings:
        deep_merge(values, helm.parse_set_string_values(",".join(strings)))
    return values


def test_the_docs_have_helm_commands():
    assert len(commands()) >= 5


@pytest.mark.parametrize("line", commands())
def test_a_documented_helm_command_renders(line):
    values = values_of(line)
    merged = chart().merge_values(copy.deepcopy(values))
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(merged)]
    assert not errors, f"{line}\n{errors}"
    assert render(values), line
