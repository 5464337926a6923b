"""The documentation is true: the CLI reference is the app's own help and names every command and option,
every console example prints what the page shows, every other shell example is a command CI runs, and
the README stays a front door that links only to files that exist."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import typer.main

from robench.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _generate():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("docs_generate", module)
    spec.loader.exec_module(module)
    return module


gen = _generate()


def _fenced(text: str):
    """(language, body lines) of every fenced code block."""
    for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        yield m.group(1), m.group(2).splitlines()


def test_the_cli_reference_is_what_the_app_prints():
    committed = gen.CLI_REFERENCE.read_text()
    assert committed == gen.cli_reference(), "run `python docs/generate.py --only cli` and commit docs/reference/cli.md"


def test_the_cli_reference_names_every_command_and_option():
    text = gen.CLI_REFERENCE.read_text()
    sections = dict(re.findall(r"^## robench (\S+)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    root = typer.main.get_command(app)
    assert set(sections) == set(root.commands)
    missing = []
    for name, command in root.commands.items():
        for param in command.params:
            shown = param.opts if param.param_type_name == "option" else [param.metavar or param.name]
            missing += [f"robench {name} {opt}" for opt in shown if opt not in sections[name]]
    assert not missing, missing


def test_the_console_examples_are_recognised():
    """The parser the generator uses finds the commands and keeps a multi-line command whole."""
    page = "text\n```console\n$ robench eval a \\\n    --n 5\nout 1\nout 2\n$ robench info a\n```\n"
    (block,) = gen.blocks(page)
    assert [e.command for e in block.examples] == ["robench eval a --n 5", "robench info a"]
    assert block.examples[0].output == ["out 1", "out 2"]
    assert (
        gen.with_outputs(page, [["new"], []])
        == "text\n```console\n$ robench eval a \\\n    --n 5\nnew\n$ robench info a\n```\n"
    )
    assert gen.volatile_free("crafted in 4.0 s, 0:00:12") == gen.volatile_free("crafted in 21.6 s, 0:01:02")
    assert gen.volatile_free("robust 70.5%") != gen.volatile_free("robust 70.0%")
    assert gen.volatile_free("(sha256 c617e1287e0f)") == gen.volatile_free("(sha256 0b5a1e287e0f)")


@pytest.mark.slow
def test_every_console_example_prints_what_its_page_shows(capsys):
    """Each page's examples run in order in a fresh folder; a changed output fails here, not in a reader's
    terminal. `python docs/generate.py` rewrites the pages."""
    code = gen.main(["--check", "--only", "examples"])
    assert code == 0, capsys.readouterr().out


def test_every_page_with_examples_has_some():
    pages = [p for p in gen.pages() if gen.blocks(p.read_text())]
    assert ROOT / "README.md" in pages and len(pages) >= 10, pages


# Shell commands shown outside console blocks: set-up steps that CI runs itself (.ci/run)
CI_STEPS = {"make install", "make test", "make docs", "make lint", "source .venv/bin/activate"}


def test_a_shell_example_outside_a_console_block_is_a_step_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    stray = []
    for page in gen.pages():
        for lang, body in _fenced(page.read_text()):
            if lang not in ("bash", "sh", "shell", ""):
                continue
            for line in body:
                command = line.split("#")[0].strip()
                if command and (command not in CI_STEPS or (command.startswith("make") and command not in ci)):
                    stray.append(f"{page.relative_to(ROOT)}: {line}")
    assert not stray, "write these as ```console examples, which the tests run:\n" + "\n".join(stray)


def test_the_github_actions_job_runs_what_ci_runs():
    """The job the CI-gate page shows is .ci/run's own gate, with the reader's checkpoint in its place."""
    page = (ROOT / "docs" / "guides" / "ci-gate.md").read_text()
    (yaml,) = [body for lang, body in _fenced(page) if lang == "yaml"]
    runs = [line.split("run: ", 1)[1] for line in yaml if "- run: " in line]
    ci = (ROOT / ".ci" / "run").read_text()
    ours = "checkpoints/lenet5-gelu-standard.safetensors"
    assert len(runs) == 2
    for run in runs:
        assert run.replace("checkpoints/my-model.safetensors", ours) in ci, run


def test_the_readme_is_a_front_door_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 15_000
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links
    broken = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not broken, broken
