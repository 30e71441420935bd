"""Write the app's OpenAPI document to openapi/openapi.json (``make openapi``).

    python -m service.openapi_export [path]

Sorted keys, 2-space indent, trailing newline: the committed file diffs cleanly, and
tests/api/test_openapi.py fails when the app's schema drifts from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def current_schema() -> dict[str, Any]:
    from service.main import create_app
    from service.settings import Settings

    # Default settings: the document must not depend on the environment it is generated in.
    return create_app(Settings(_env_file=None)).openapi()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(current_schema()), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
