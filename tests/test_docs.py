"""The documentation cannot drift from the configs: every command line of a Hydra entry point
(`python train.py ...`, `python attack.py ...`, `python ranges.py ...`, also with `-m`, and the same as
`rnic-train ...`, `rnic train ...` or `python -m rnic train ...`) in a fenced code block of README.md or
docs/*.md composes with the real configs, as the entry point would compose it.

The blocks are read as the shell reads them: backslash continuations are joined, comments dropped,
`;` separates commands, `NAME=value` assignments and `for NAME in ...` loops set variables that later
lines use (`$NAME`, `${NAME}`; a loop variable takes each of its values). Composition loads no file, so
placeholders such as `model.weights=CKPT` or `.../RUN/...` compose like real paths. A multirun line is
composed with the first value of every sweep, and once more for each other value of each sweep. The
training method's name and settings, which composition takes as any string, are checked as train.py
checks them before it builds anything.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import OmegaConf

import rnic.commands
from rnic.jobs import switch_arguments
from rnic.methods import TrainingMethod
from tests.conftest import ROOT, compose_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = ("bash", "sh", "shell", "console")
# An entry point's command in a block that is not marked as shell would go unchecked.
UNMARKED = re.compile(
    r"^\s*(python3? (train|attack|ranges)\.py|rnic[- ](train|attack|ranges))\b", re.MULTILINE
)
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")
MULTIRUN = ("-m", "--multirun")
PYTHON = {"python", "python3"}
# "python attack.py ... attack_run.save_images=true": the rest of a command shown above, not an override.
ELLIPSIS = "..."


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    script: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: python {self.script} {' '.join(self.args)}"


@cache
def entry_point(script: str) -> tuple[str, tuple[str, ...]] | None:
    """(config name, switched keys) of a Hydra entry point, read from its source: the `config_name` of
    `@hydra.main` and the keys it hands to `rnic.jobs.switch_arguments` in the command that the script
    runs (rnic/commands/<script>); None for other scripts."""
    path = Path(rnic.commands.__file__).parent / script
    if not path.is_file():
        return None
    config, switches = None, ()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        if name == "main" and getattr(node.func, "value", None) is not None:
            names = [ast.literal_eval(k.value) for k in node.keywords if k.arg == "config_name"]
            config = names[0] if names else config
        elif name == "switch_arguments":
            switches = ast.literal_eval(node.args[0])
    return (config, switches) if config else None


def as_script(tokens: list[str]) -> list[str]:
    """`rnic-train ARGS`, `rnic train ARGS` and `python -m rnic train ARGS` as `python train.py ARGS`."""
    if tokens and tokens[0].startswith("rnic-"):
        return ["python", f"{tokens[0].removeprefix('rnic-')}.py", *tokens[1:]]
    for start in (["rnic"], ["python", "-m", "rnic"], ["python3", "-m", "rnic"]):
        if tokens[: len(start)] == start and len(tokens) > len(start):
            return ["python", f"{tokens[len(start)]}.py", *tokens[len(start) + 1 :]]
    return tokens


def shell_segments(line: str) -> list[str]:
    """The commands of one logical line: split at `;` outside quotes, a `#` comment dropped."""
    segments, current, quote = [], [], None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            break
        elif char == ";":
            segments.append("".join(current))
            current = []
            continue
        current.append(char)
    segments.append("".join(current))
    return [s.strip() for s in segments if s.strip()]


def one_at_a_time(options: dict) -> list[dict]:
    """Choices covering every option once: the first of each, then each other option of each key alone
    (every value of a loop or a sweep is checked without composing their whole product)."""
    first = {key: values[0] for key, values in options.items()}
    return [first] + [{**first, key: value} for key, values in options.items() for value in values[1:]]


def expand(text: str, env: dict[str, list[str]]) -> list[str]:
    """`text` with its variables substituted (unknown ones kept), once per value of each loop variable."""
    used = {name: env[name] for name in sorted({a or b for a, b in VARIABLE.findall(text)} & env.keys())}
    return [
        VARIABLE.sub(lambda m, c=choice: c.get(m[1] or m[2], m[0]), text) for choice in one_at_a_time(used)
    ]


def block_commands(block: str) -> list[tuple[int, str, list[str]]]:
    """(line offset, script, arguments) of every `python SCRIPT ...` in a shell block."""
    env: dict[str, list[str]] = {}
    found = []
    lines = block.splitlines()
    offset = 0
    while offset < len(lines):
        start, line = offset, lines[offset]
        while line.endswith("\\") and offset + 1 < len(lines):  # a continuation, as the shell joins it
            offset += 1
            line = line[:-1] + lines[offset]
        offset += 1
        for segment in shell_segments(line):
            for text in expand(segment, env):
                tokens = shlex.split(text)
                while tokens and tokens[0] in ("do", "then", "else"):
                    tokens = tokens[1:]
                tokens = as_script(tokens)
                if not tokens or tokens[0] == "done":
                    continue
                if tokens[0] == "for" and len(tokens) > 2 and tokens[2] == "in":
                    env[tokens[1]] = tokens[3:]
                elif len(tokens) == 1 and ASSIGNMENT.match(tokens[0]):
                    name, value = tokens[0].split("=", 1)
                    env[name] = [value]
                elif PYTHON & set(tokens[:-1]):
                    at = next(i for i, token in enumerate(tokens) if token in PYTHON)
                    found.append((start, tokens[at + 1], tokens[at + 2 :]))
    return found


def doc_commands() -> list[Command]:
    commands = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.finditer(text):
            first = text.count("\n", 0, block.start(2)) + 1
            if block[1] not in SHELL:
                assert not UNMARKED.search(block[2]), f"{doc.name}:{first}: mark the block ```bash"
                continue
            for offset, script, args in block_commands(block[2]):
                if entry_point(script) is not None:  # report.py, benchmarks/*.py: argparse, not Hydra
                    commands.append(Command(str(doc.relative_to(ROOT)), first + offset, script, tuple(args)))
    return commands


COMMANDS = doc_commands()
COMPOSED: set[tuple[str, ...]] = set()  # override lists already composed (one line often repeats another)


def compositions(command: Command, monkeypatch) -> list[list[str]]:
    """The override lists to compose for a command line (one, or one per swept value of a multirun)."""
    args = [a for a in command.args if a != ELLIPSIS]
    multirun = any(a in MULTIRUN for a in args)
    args = [a for a in args if a not in MULTIRUN]
    unknown = [a for a in args if a.startswith("-")]
    assert not unknown, f"{command}: options the test does not know: {unknown}"
    unset = [a for a in args if "$" in a]
    assert not unset, f"{command}: a shell variable no line of its block sets: {unset}"
    _, switches = entry_point(command.script)
    monkeypatch.setattr(sys, "argv", [command.script, *args])
    switch_arguments(switches)  # as the entry point does before Hydra parses its arguments
    overrides = sys.argv[1:]
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = {i: list(o.sweep_string_iterator()) for i, o in enumerate(parsed) if o.is_sweep_override()}
    # A multirun may sweep only what its experiment's hydra.sweeper.params set: then it composes as it is.
    return [
        [f"{parsed[i].get_key_element()}={choice[i]}" if i in choice else o for i, o in enumerate(overrides)]
        for choice in one_at_a_time(sweeps)
    ]


def test_the_docs_hold_entry_point_commands():
    # The reader finds what the docs hold: single runs and multiruns of every entry point, in the README too.
    assert len(COMMANDS) >= 40 and "README.md" in {c.doc for c in COMMANDS}
    assert {c.script for c in COMMANDS} == {"train.py", "attack.py", "ranges.py"}
    assert any(set(c.args) & set(MULTIRUN) for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.doc}:{c.line}")
def test_each_documented_command_composes(command, tmp_path, monkeypatch):
    monkeypatch.setenv("RNIC_DATA_DIR", str(tmp_path))
    config_name, _ = entry_point(command.script)
    for overrides in compositions(command, monkeypatch):
        if (config_name, *overrides) in COMPOSED:
            continue
        try:
            cfg = compose_config(tmp_path, *overrides, config_name=config_name)
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
            if "method" in cfg:  # the method's class, as train.py finds it first
                assert issubclass(get_class(cfg.method._target_), TrainingMethod)
        except Exception as err:  # noqa: BLE001 - any failure is the doc line's, named with it
            raise AssertionError(f"{command}\ndoes not compose ({overrides}):\n{err}") from None
        COMPOSED.add((config_name, *overrides))


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc) -> set[str]:
    found, seen = set(), {}
    for line in FENCE.sub("", doc.read_text()).splitlines():
        if re.match(r"#{1,6} ", line):
            base = slug(line.lstrip("#"))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_every_link_between_the_docs_reaches_its_file_and_heading():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(FENCE.sub("", doc.read_text())):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken
