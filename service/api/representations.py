"""The representations of a stored trajectory, shared by the routes that serve one (a simulation's, a sweep
point's): which one the Accept header asks for, the ``fields`` to keep, and the pieces of each (``service.codec``);
and which representation of a sweep's results (JSON pages, CSV, Parquet: ``service.results_table``) is asked for."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from service import codec
from service.api.negotiation import JSON, NETCDF, NPZ, TRAJECTORY_MEDIA_TYPES, negotiate
from service.problems import ProblemError, field_error
from service.results_table import CSV, PARQUET, parquet_available

EXTENSIONS = {NPZ: "npz", NETCDF: "nc"}
BINARY = {"type": "string", "format": "binary"}  # the OpenAPI schema of a binary representation
# The response header of every route whose representation follows the request's Accept header (OpenAPI).
VARY_ACCEPT = {"Vary": {"description": "Accept: the representation depends on it", "schema": {"type": "string"}}}


def accepted(accept: str | None) -> str:
    """The representation ``accept`` ranks highest; 406 naming the header when none matches."""
    media = negotiate(accept)
    if media is None:
        raise ProblemError(406, "not-acceptable",
                           f"the trajectory is served as {' or '.join(TRAJECTORY_MEDIA_TYPES)}, and Accept is "
                           f"{accept!r}",
                           errors=[field_error(["Accept"], "not_acceptable", f"no representation matches {accept!r}",
                                               f"send Accept: {JSON}, {NPZ} or {NETCDF} (or no Accept header)",
                                               "header")])
    return media


def selected(fields: list[str] | None) -> list[str] | None:
    """``?fields=`` as the members to keep (None: all); 422 naming the query parameter."""
    try:
        return codec.parse_fields(fields)
    except codec.SelectionError as exc:
        raise ProblemError(422, "validation-error", f"{exc.field}: {exc.message}",
                           errors=[field_error([exc.field], "invalid_field", exc.message, exc.fix, "query")]) from None


def encoder(media: str, fields: list[str] | None, every: int | None,
            attributes: Mapping[str, str] | None = None) -> Callable[[codec.Stored], Iterator[bytes]]:
    """The pieces of a stored trajectory as ``media`` (netCDF with ``attributes``)."""
    def encode(stored: codec.Stored) -> Iterator[bytes]:
        if media == JSON:
            return codec.iter_json(stored, fields, every)
        if media == NPZ:
            return codec.iter_npz(stored, fields, every)
        return iter([codec.to_netcdf(stored, fields, every, attributes)])

    # What the download budget needs to know (service/jobs/downloads.py): netCDF is built whole, ``every`` copies.
    encode.whole = media not in (JSON, NPZ)  # type: ignore[attr-defined]
    encode.thinned = every not in (None, 1)  # type: ignore[attr-defined]
    encode.fields = fields  # type: ignore[attr-defined]
    return encode


def streamed(pieces: Iterator[bytes], media: str, name: str) -> StreamingResponse:
    """The response sending ``pieces`` (a stored trajectory's, service/jobs/submission.py). When it ends, sent or
    dropped by its client, the pieces' generator is closed: its store connection closes and its share of the download
    budget (service/jobs/downloads.py) is given back at once, not whenever the garbage collector finds it."""
    return StreamingResponse(pieces, media_type=media, headers=download_headers(media, name),
                             background=BackgroundTask(_close, pieces))


def _close(pieces: Iterator[bytes]) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()


def download_headers(media: str, name: str) -> dict[str, str]:
    """Vary on Accept, and a file name for the binary representations."""
    headers = {"Vary": "Accept"}
    if media in EXTENSIONS:
        headers["Content-Disposition"] = f'attachment; filename="{name}.{EXTENSIONS[media]}"'
    return headers


def results_media(accept: str | None) -> str:
    """The representation of a sweep's results ``accept`` ranks highest: JSON pages, CSV, or Parquet where this
    service can write it (pyarrow); 406 naming the header when none matches."""
    offered = (JSON, CSV, PARQUET) if parquet_available() else (JSON, CSV)
    media = negotiate(accept, offered)
    if media is None:
        missing = "" if PARQUET in offered else f" ({PARQUET} needs pyarrow, which this server lacks: install the " \
                                                 "service with its parquet extra, pip install 'dlnsim[parquet]')"
        raise ProblemError(406, "not-acceptable", f"a sweep's results are served as {', '.join(offered)}, and Accept "
                           f"is {accept!r}{missing}",
                           errors=[field_error(["Accept"], "not_acceptable", f"no representation matches {accept!r}",
                                               f"send Accept: {' or '.join(offered)} (or no Accept header)",
                                               "header")])
    return media
