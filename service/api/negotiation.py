"""Content negotiation (RFC 9110 §12.5.1): which of the representations a route offers the Accept header ranks
highest."""

from __future__ import annotations

from collections.abc import Sequence

JSON = "application/json"
NPZ = "application/x-npz"
NETCDF = "application/x-netcdf"
TRAJECTORY_MEDIA_TYPES = (JSON, NPZ, NETCDF)  # in order of preference when the Accept header ranks them equally


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    """(media range, q) per entry of an Accept header; a malformed q counts as 1 (be lenient)."""
    out = []
    for entry in accept.split(","):
        parts = [p.strip() for p in entry.split(";")]
        media = parts[0].lower()
        if not media:
            continue
        if "/" not in media:
            media = media + "/*" if media == "*" else media
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
        out.append((media, q))
    return out


def _match(media_range: str, media: str) -> int:
    """Specificity of the match: 3 exact, 2 type/*, 1 */*, 0 no match."""
    if media_range == media:
        return 3
    kind, _, sub = media_range.partition("/")
    if sub == "*" and kind == "*":
        return 1
    if sub == "*" and media.startswith(kind + "/"):
        return 2
    return 0


def negotiate(accept: str | None, offered: Sequence[str] = TRAJECTORY_MEDIA_TYPES) -> str | None:
    """The offered media type the Accept header ranks highest (None: nothing acceptable; no header: the first).

    Each offered type takes the q of the most specific range that matches it; ties go to the more specific
    match, then to the order of ``offered``.
    """
    if accept is None or not accept.strip():
        return offered[0]
    ranges = _media_ranges(accept)
    best, best_key = None, (0.0, 0, 0)
    for order, media in enumerate(offered):
        matches = [(_match(r, media), q) for r, q in ranges]
        specificity, q = max(matches, default=(0, 0.0))
        if specificity == 0 or q <= 0:
            continue
        key = (q, specificity, -order)
        if best is None or key > best_key:
            best, best_key = media, key
    return best
