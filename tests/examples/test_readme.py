"""The README's reference tables match the code: every route, every DLNSIM_* setting with its default, every
problem type. A new route, setting or problem type fails here until the README documents it; the failure
message gives the rows to paste."""

from __future__ import annotations

import json
import re
from pathlib import Path

from service.problems import PROBLEM_TYPES
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SPEC = json.loads((ROOT / "openapi" / "openapi.json").read_text(encoding="utf-8"))
HTTP_METHODS = ("get", "put", "post", "patch", "delete")


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def render_default(value: object) -> str:
    """A setting's default as the limits table shows it."""
    return "unset" if value is None else str(value)


def settings_rows() -> dict[str, str]:
    """DLNSIM_NAME -> rendered default, from the Settings class itself."""
    return {f"DLNSIM_{name.upper()}": render_default(field.default) for name, field in Settings.model_fields.items()}


def readme_settings() -> dict[str, str]:
    rows = {}
    for line in table_lines(README):
        match = re.match(r"\|\s*`(DLNSIM_[A-Z_]+)`\s*\|\s*`([^`]*)`\s*\|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]


def test_limits_table_lists_every_setting_with_its_default():
    expected, documented = settings_rows(), readme_settings()
    missing = [f"| `{name}` | `{default}` | ... |" for name, default in expected.items()
               if documented.get(name) != default]
    assert not missing, "README's settings table lacks or misstates:\n" + "\n".join(missing)
    unknown = set(documented) - set(expected)
    assert not unknown, f"README documents settings that do not exist: {unknown}"


def test_troubleshooting_table_covers_every_problem_type():
    lines = table_lines(README)
    missing = [slug for slug in PROBLEM_TYPES if not any(f"`/problems/{slug}`" in line for line in lines)]
    assert not missing, f"README's troubleshooting table lacks the problem types {missing}"


def test_api_table_lists_every_route_of_the_spec():
    def normal(path: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", path)

    lines = [normal(line) for line in table_lines(README)]
    missing = [f"{method.upper()} {path}" for path, item in SPEC["paths"].items() for method in item
               if method in HTTP_METHODS
               and not any(f"`{method.upper()}`" in line and f"`{normal(path)}`" in line for line in lines)]
    assert not missing, f"README's API table lacks {missing}"
