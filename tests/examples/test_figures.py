"""The README's figure is made by docs/figures/make_figures.py with the service's own code: the script keeps
running, so the committed PNG can always be made again."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_figure_script_renders_a_png_of_the_modes():
    script = runpy.run_path(str(ROOT / "docs" / "figures" / "make_figures.py"))
    png = script["hierarchy_modes"]()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert (ROOT / "docs" / "figures" / "hierarchy_modes.png").is_file()
    assert "docs/figures/hierarchy_modes.png" in (ROOT / "README.md").read_text(encoding="utf-8")
