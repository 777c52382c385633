"""Every console script's --help: the examples print one per line, as written, and name only
options that exist (in the right place: a group's options before its command); so do the
commands shown in the README and docs/."""

from __future__ import annotations

import pathlib
import shlex

import click
import pytest
from click.testing import CliRunner

from ganserve.bench.cli import main as gan_bench
from ganserve.client.cli import main as gan_client
from ganserve.export.cli import main as export_gan
from ganserve.serve.cli import main as ganserve
from ganserve.train.cli import main as gan_train
from ganserve.train.eval_cli import main as gan_eval

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPTS: dict[str, click.Command] = {
    "ganserve": ganserve,
    "gan-client": gan_client,
    "gan-train": gan_train,
    "gan-eval": gan_eval,
    "export-gan": export_gan,
    "gan-bench": gan_bench,
}


def commands() -> list[tuple[list[str], click.Command]]:
    """(argv to reach it, command) for every script and subcommand."""
    found = []
    for name, command in SCRIPTS.items():
        found.append(([name], command))
        if isinstance(command, click.Group):
            found += [([name, sub], command.commands[sub]) for sub in sorted(command.commands)]
    return found


def examples(command: click.Command) -> list[str]:
    """The example lines of a command's help: the indented block after "Examples:", with
    backslash continuations kept as separate lines."""
    lines = (command.help or "").splitlines()
    if "Examples:" not in lines:
        return []
    block = []
    for line in lines[lines.index("Examples:") + 1 :]:
        if line.strip() in ("", "\b"):
            if block:
                break
            continue
        block.append(line.strip())
    return block


def example_commands(command: click.Command) -> list[list[str]]:
    """Each example as words, backslash continuations joined and comments dropped."""
    joined = "\n".join(examples(command)).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines()]


def options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}


WITH_EXAMPLES = [(argv, command) for argv, command in commands() if examples(command)]


def test_every_script_has_examples() -> None:
    owners = {argv[0] for argv, _ in WITH_EXAMPLES}
    assert owners == set(SCRIPTS)


@pytest.mark.parametrize(
    ("argv", "command"), WITH_EXAMPLES, ids=[" ".join(a) for a, _ in WITH_EXAMPLES]
)
def test_help_prints_each_example_line_as_written(argv: list[str], command: click.Command) -> None:
    result = CliRunner().invoke(SCRIPTS[argv[0]], [*argv[1:], "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    printed = {line.strip() for line in result.output.splitlines()}
    for line in examples(command):
        assert line in printed, f"{' '.join(argv)} --help rewraps {line!r}:\n{result.output}"


@pytest.mark.parametrize(
    ("argv", "command"), WITH_EXAMPLES, ids=[" ".join(a) for a, _ in WITH_EXAMPLES]
)
def test_examples_name_only_options_that_exist(argv: list[str], command: click.Command) -> None:
    for words in example_commands(command):
        while words and "=" in words[0]:  # VAR=value prefixes
            words.pop(0)
        if words[0] != argv[0]:
            continue  # another program (torchrun) running this one
        assert_options_exist(words)


def assert_options_exist(words: list[str]) -> None:
    """``words`` (a script and its arguments) name only options of the command they reach."""
    where = SCRIPTS[words[0]]
    for word in words[1:]:
        if isinstance(where, click.Group) and word in where.commands:
            where = where.commands[word]
        elif word.startswith("-"):
            assert word in options(where), (
                f"{' '.join(words)!r}: {word} is not an option of {where.name}"
            )


def doc_commands() -> list[tuple[str, list[str]]]:
    """(where, words) for each line of a fenced block in the README and docs/ that runs one of
    the scripts, as a shell would split it."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        fenced = path.read_text().split("```")[1::2]
        for block in fenced:
            for line in block.replace("\\\n", " ").splitlines():
                try:
                    words = shlex.split(line.removeprefix("$ "), comments=True)
                except ValueError:
                    continue  # not shell
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words.pop(0)
                if words and words[0].removeprefix(".venv/bin/") in SCRIPTS:
                    words[0] = words[0].removeprefix(".venv/bin/")
                    found.append((f"{path.name}: {line.strip()[:60]}", words))
    return found


DOC_COMMANDS = doc_commands()


def test_the_docs_show_each_script() -> None:
    assert {words[0] for _, words in DOC_COMMANDS} == set(SCRIPTS)


@pytest.mark.parametrize("words", [w for _, w in DOC_COMMANDS], ids=[i for i, _ in DOC_COMMANDS])
def test_doc_commands_name_only_options_that_exist(words: list[str]) -> None:
    assert_options_exist(words)
