"""A sweep's results as one flat table: one row per point, one column per value (CSV and Parquet downloads).

    table = results_table(point_documents)      # the JSON rows of GET /v1/sweeps/{id}/results, all pages
    body = to_csv(table)                        # text/csv
    body = to_parquet(table)                    # application/vnd.apache.parquet (needs pyarrow: the parquet extra)

Columns, in order (decided here, the one place; the Python client's ``Sweep.results()`` reads the CSV):

* ``point``: the point's index k;
* one column per swept parameter, named by its path (``init.scale``, ``training.learning_rate``); a list-valued
  parameter (``network.hidden``) as JSON text;
* ``status``, ``finished_at`` (UTC, ISO 8601; a timestamp in Parquet), ``outcome``;
* one column per scalar result (``final_loss``, ``final_excess_loss``, …, ``theory_model``, …; as the JSON rows);
* the per-mode vectors in wide form, 1-based: ``final_strength_1 … final_strength_k``, ``learning_time_1 …``,
  ``learning_time_theory_1 …`` (k the most modes of any point; empty where a point has fewer or none). Wide, not
  long: one row per point is what a sweep is plotted and grouped by, and k is small (min(n_in, n_out));
* ``error_type``, ``error_detail`` of a failed point.

Missing values are empty cells in CSV and nulls in Parquet; floats are printed as the shortest text that reads back
to the same float64 (``repr``), so a CSV round-trips to the JSON numbers exactly.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from service.schemas.sweeps import SUMMARY_FIELDS

Table = dict[str, list[Any]]

CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"

# per-mode vectors: each becomes <name>_1 … <name>_k
MODE_VECTORS = ("final_strength", "learning_time", "learning_time_theory")
# integer columns (nullable): Int64 in Parquet
INTEGER_COLUMNS = ("point", "steps_to_convergence", "diverged_at_step")
STRING_COLUMNS = ("status", "outcome", "theory_model", "error_type", "error_detail")


def _cell(value: Any) -> Any:
    """A parameter's value as a cell: lists and objects as JSON text."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def results_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The flat table of results rows (``documents.point_document``s, in point order)."""
    parameters: list[str] = []
    for row in rows:
        for path in row.get("parameters") or {}:
            if path not in parameters:
                parameters.append(path)
    widths = {name: max((len(row.get(name) or ()) for row in rows), default=0) for name in MODE_VECTORS}
    table: Table = {"point": [row["index"] for row in rows]}
    for path in parameters:
        table[path] = [_cell((row.get("parameters") or {}).get(path)) for row in rows]
    for name in ("status", "finished_at", "outcome"):
        table[name] = [row.get(name) for row in rows]
    for name in SUMMARY_FIELDS:
        if name in MODE_VECTORS:
            for i in range(widths[name]):
                table[f"{name}_{i + 1}"] = [(v[i] if (v := row.get(name)) and i < len(v) else None) for row in rows]
        else:
            table[name] = [row.get(name) for row in rows]
    table["error_type"] = [(row.get("error") or {}).get("type") for row in rows]
    table["error_detail"] = [(row.get("error") or {}).get("detail") for row in rows]
    return table


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back to the same float64
    return str(value)


def to_csv(table: Table) -> bytes:
    """RFC 4180 CSV (CRLF line ends, a header row), UTF-8."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(list(table))
    for values in zip(*table.values(), strict=True):
        writer.writerow([_text(v) for v in values])
    return out.getvalue().encode()


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _parquet_column(name: str, values: list[Any]):
    import pyarrow as pa

    if name == "finished_at":
        return pa.array([None if v is None else datetime.fromisoformat(v) for v in values],
                        type=pa.timestamp("us", tz="UTC"))
    if name in INTEGER_COLUMNS:
        return pa.array(values, type=pa.int64())
    if name in STRING_COLUMNS:
        return pa.array(values, type=pa.string())
    if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array(values)  # a parameter column: let Arrow infer (strings, booleans)


def to_parquet(table: Table) -> bytes:
    """An Apache Parquet file (pyarrow; zstd): the columns typed — float64, nullable int64, strings, UTC
    timestamps; parameters as Arrow infers them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.table({name: _parquet_column(name, values) for name, values in table.items()})
    out = io.BytesIO()
    pq.write_table(arrow, out, compression="zstd")
    return out.getvalue()
