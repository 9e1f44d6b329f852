"""The README's promises: its snippet runs, and CI runs its test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_snippet_runs():
    """The 'SAPGLoss in your own TorchRL code' snippet runs as written."""
    (snippet,) = re.findall(r"```python\n(.*?)```", README, re.S)
    exec(compile(snippet, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    """.ci/run executes exactly the README's test command."""
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README)
    test_command = next(c for c in commands if "[test]" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
