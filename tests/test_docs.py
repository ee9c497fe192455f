"""The docs cannot drift from the code: every `dqnkit ...` command they show parses, the
README's Python quick start runs, the README stays short, every config help is short, no
page narrates the project's past, and the changelog's latest release is the package's."""

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

import dqnkit
from dqnkit.cli import build_parser
from dqnkit.config import Config
from dqnkit.errors import DqnkitError

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
SHELL_STOPS = {">", ">>", "|", "||", "&&", ";", "&", "2>", "2>&1"}
# Placeholders the pages use in command lines (docs/cli.md names them), as a parseable value.
PLACEHOLDERS = {"S": "0", "NAME": "target-ablation", "COMMAND": "train"}
HISTORY = re.compile(r"this version|previous version|earlier version|last version|versions ago|\(issue [0-9]+\)", re.I)


def _dqnkit_argv(line: str) -> list[str] | None:
    """The arguments after `dqnkit` when ``line`` runs dqnkit (after VAR=value prefixes, as
    `python -m dqnkit`, or by a path such as .venv/bin/dqnkit); None when it does not."""
    if not re.search(r"(^|[\s/])dqnkit(\s|$)", line):
        return None
    tokens = shlex.split(line, comments=True)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]
    if len(tokens) >= 3 and tokens[1:3] == ["-m", "dqnkit"] and tokens[0].endswith(("python", "python3")):
        tokens = tokens[2:]
    if not tokens or not (tokens[0] == "dqnkit" or tokens[0].endswith("/dqnkit")):
        return None
    argv = []
    for token in tokens[1:]:
        if token in SHELL_STOPS or token.startswith((">", "2>")):
            break
        argv.append(PLACEHOLDERS.get(token, token))
    return argv


def _command_lines() -> list[tuple[str, str]]:
    """(where, line) for every dqnkit command in a code block or inline code of the docs."""
    found = []
    for page in PAGES:
        text = page.read_text()
        where = str(page.relative_to(ROOT))
        for block in FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                if _dqnkit_argv(line) is not None:
                    found.append((where, line.strip()))
        for code in INLINE.findall(FENCE.sub("", text)):
            line = " ".join(code.split())
            if line.startswith(("dqnkit ", "python -m dqnkit ")) or line == "dqnkit":
                found.append((where, line))
    return found


COMMANDS = _command_lines()
SUBCOMMANDS = set(next(a for a in build_parser()._actions if a.dest == "command").choices)


def test_the_docs_show_commands():
    assert len(COMMANDS) > 50
    assert {where for where, _ in COMMANDS} >= {"README.md", "docs/cli.md", "docs/gpu.md", "docs/cluster.md"}


@pytest.mark.parametrize("where, line", COMMANDS, ids=[f"{w}: {c[:60]}" for w, c in COMMANDS])
def test_every_documented_command_parses(where, line, capsys):
    argv = _dqnkit_argv(line)
    assert argv is not None, f"{where}: cannot read {line!r}"
    if len(argv) == 1 and not argv[0].startswith("-"):  # a command's name in prose: `dqnkit eval`
        assert argv[0] in SUBCOMMANDS, f"{where}: `{line}`: no such command"
        return
    try:
        build_parser().parse_args(argv)
    except DqnkitError as err:
        pytest.fail(f"{where}: `{line}` does not parse: {err}")
    except SystemExit as done:  # --help prints and exits 0
        assert done.code == 0, f"{where}: `{line}` exits {done.code}"


def test_a_wrong_command_would_fail():
    """The check above has teeth: an unknown flag is a usage error."""
    with pytest.raises(DqnkitError):
        build_parser().parse_args(_dqnkit_argv("dqnkit train --preset cartpole --no-such-flag"))


@pytest.mark.slow
def test_readme_python_quick_start_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, "the README has one Python quick start"
    # a few seconds instead of a whole run: fewer steps, an early evaluation, in a tmp dir
    code = re.sub(r"total_steps=[\d_]+", "total_steps=1_500, learning_starts=500, eval_every=0", blocks[0])
    assert code != blocks[0], "the quick start sets total_steps"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "quickstart" / "summary.json").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_tells_the_projects_history(page):
    hits = [m.group(0) for m in HISTORY.finditer(page.read_text())]
    assert not hits, f"{page.relative_to(ROOT)}: history belongs in CHANGELOG.md: {hits}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_config_help_is_short():
    long = {f.name: len(f.metadata["help"]) for f in dataclasses.fields(Config) if len(f.metadata["help"]) > 200}
    assert not long, f"config help over 200 characters (move the story into docs/): {long}"


def test_changelog_latest_release_is_the_package_version():
    releases = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    released = [r for r in releases if r.lower() != "unreleased"]
    assert released and released[0] == dqnkit.__version__


def test_cli_version_is_the_package_version(capsys):
    from dqnkit.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == dqnkit.__version__
