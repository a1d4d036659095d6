"""README's commands stay true: CI runs README's test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    install, _, command = test_cmd.rpartition(" && ")
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.strip() in ci.splitlines()
    assert "torch==2.13.0" in install and "torch==2.13.0" in ci
    assert ".ci/constraints.txt" in install and ".ci/constraints.txt" in ci
