"""The commands the README shows are the ones tests run, so a change that breaks one fails a test."""

import ast
import re
import shlex

from conftest import PROJECT

README = PROJECT / "README.md"
# Where the README runs a project command from: the virtualenv `make` creates.
VENV_BIN = ".venv/bin/"


def readme_commands(section: str) -> list[list[str]]:
    """The project commands in a section's shell blocks, split as a shell would split them."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```sh\n(.*?)```", text[start:end], flags=re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith(VENV_BIN)]


def commands_tests_run() -> set[tuple[str, ...]]:
    """The commands tests give as one string: to `run_command`, or as a parameter of a test
    that passes it on (`pytest.param`)."""
    commands = set()
    for path in PROJECT.glob("tests/test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            called = ast.unparse(node.func)
            if called in ("run_command", "pytest.param") and isinstance(node.args[0].value, str):
                commands.add(tuple(shlex.split(node.args[0].value)))
    return commands


def test_the_commands_in_run_it_are_copied_from_tests() -> None:
    commands = readme_commands("Run it")
    assert len(commands) == 3, commands  # everything, a table and what follows it, one day of events
    tested = commands_tests_run()
    for command in commands:
        assert command[0].startswith(VENV_BIN)
        assert (command[0].removeprefix(VENV_BIN), *command[1:]) in tested, shlex.join(command)
