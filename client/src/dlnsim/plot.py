"""Figures the service draws (SVG), shown inline by Jupyter and saved to a file."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Figure"]


class Figure:
    """An SVG figure: Jupyter shows it (``_repr_svg_``); ``save`` writes it; ``svg`` is its text."""

    def __init__(self, svg: str, title: str = "figure") -> None:
        self.svg = svg
        self.title = title

    def _repr_svg_(self) -> str:
        return self.svg

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the SVG to ``path`` (e.g. ``modes.svg``) and return the path."""
        target = Path(path)
        target.write_text(self.svg, encoding="utf-8")
        return target

    def __repr__(self) -> str:
        return f"<Figure {self.title}: {len(self.svg)} characters of SVG>"
