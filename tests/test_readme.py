"""The README's two set-up commands are the ones CI and newcomers run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = next(b.strip() for b in _bash_blocks() if "pytest" in b and "venv" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_main_command_installs_torch_first_and_runs_offline_job() -> None:
    main = next(b.strip() for b in _bash_blocks() if "venv" in b and "pytest" not in b)
    assert main.index("torch==2.13.0") < main.index("pip install -e .")
    assert "kandinsky " in main.split("&&")[-1]


def test_cli_entry_point_has_help_with_examples() -> None:
    import contextlib
    import io

    from kandinsky.cli import main

    for command in ("convert", "info", "download", "selftest"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([command, "--help"])
        assert "example" in out.getvalue(), command
