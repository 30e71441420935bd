"""Trajectory downloads through the service: a ~100 MB trajectory (JSON) served as JSON, as .npz and as
``?fields=loss``, and its stored size, beside the earlier store (its JSON text, zstd level 1) in the same run.

    python -m bench.downloads [--quick]     # replaces the "Trajectory downloads" section of bench/results.md

A real ``python -m service`` runs a (64,128,64) GD job that records every layer (``record.weights``) at 260
records; the client then downloads it as a user would (httpx, the body read whole) and the timings are the best
of several rounds. The earlier design stored the JSON text compressed; its cost of answering ``?fields=loss`` was
a decompression and a parse of the whole document, timed here on the same document in the same run.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import orjson
import zstandard

from .common import Context, Row, best_time, run_standalone
from .service import Service

RESULTS = Path(__file__).with_name("results.md")
HEADING = "## Trajectory downloads"


def _curl_seconds(url: str) -> float:
    """The wall time curl takes to fetch ``url`` into /dev/null (a client that costs next to nothing)."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", url], capture_output=True,
                         text=True, check=True).stdout
    return float(out)


def big_job(records: int) -> bytes:
    return orjson.dumps({
        "data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 500},
        "network": {"hidden": [128]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
        "training": {"method": "gd", "learning_rate": 0.02, "steps": 3000, "stop_at_convergence": False},
        "record": {"points": records, "weights": True}})


def downloads(ctx: Context) -> list[Row]:
    ctx.sample_gemm()  # the machine's state when this ran (the standalone header reports it)
    records = 26 if ctx.quick else 260
    rounds = 2 if ctx.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp), DLNSIM_WORKERS="1")
        try:
            response = service.client.post("/v1/simulations", content=big_job(records),
                                            headers={"Content-Type": "application/json", "Prefer": "wait=300"})
            job = response.json()["id"]
            url = f"/v1/simulations/{job}/trajectory"
            body = service.client.get(url).content
            npz = service.client.get(url, headers={"Accept": "application/x-npz"}).content
            json_s = best_time(lambda: service.client.get(url).content, rounds)
            curl_s = min(_curl_seconds(service.url + url) for _ in range(rounds))
            npz_s = best_time(lambda: service.client.get(url, headers={"Accept": "application/x-npz"}).content, rounds)
            loss_s = best_time(lambda: service.client.get(url, params={"fields": "loss"}).content, rounds)
            with sqlite3.connect(Path(tmp) / f"data-{service.port}" / "dlnsim.sqlite3") as conn:
                stored = conn.execute("SELECT size FROM results WHERE job_id = ?", (job,)).fetchone()[0]
        finally:
            service.stop()
    # the earlier store, on the same document: its JSON text at zstd level 1, and what ?fields=loss cost it
    old = zstandard.ZstdCompressor(level=1).compress(body)
    old_loss_s = best_time(lambda: orjson.dumps({"loss": orjson.loads(zstandard.ZstdDecompressor().decompress(old))
                                                 ["loss"]}), rounds)
    with np.load(io.BytesIO(npz)) as archive:
        assert np.array_equal(archive["time"], np.array(orjson.loads(body)["time"]))
    mb = len(body) / 1e6
    target_mb = 10 if ctx.quick else 100
    return [
        Row("downloads", f"JSON, {mb:.0f} MB document", value=f"{mb / curl_s:,.0f} MB/s ({curl_s:.2f} s)",
            bar="≥ 300 MB/s", passed=None if ctx.quick else mb / curl_s >= 300,
            note=f"streamed, read by curl on loopback (what the service sends); httpx reading it in Python: "
                 f"{mb / json_s:,.0f} MB/s ({json_s:.2f} s); best of the rounds"),
        Row("downloads", f".npz, {len(npz) / 1e6:.0f} MB", value=f"{npz_s:.2f} s", bar="< 1 s",
            passed=None if ctx.quick else npz_s < 1.0, note="uncompressed archive; arrays equal the JSON's"),
        Row("downloads", "?fields=loss", value=f"{loss_s * 1e3:.1f} ms", bar="< 50 ms",
            passed=None if ctx.quick else loss_s < 0.05,
            note=f"the earlier JSON-text store needed {old_loss_s * 1e3:.0f} ms of decompressing and parsing for it "
                 f"(×{old_loss_s / loss_s:.0f})"),
        Row("downloads", "stored size", value=f"{stored / 1e6:.1f} MB", bar="≤ the JSON text at zstd 1",
            passed=stored <= len(old),
            note=f"the JSON text at zstd level 1 (the earlier store): {len(old) / 1e6:.1f} MB; ratio "
                 f"{stored / len(old):.2f}; document {mb:.0f} MB (target ~{target_mb} MB)"),
    ]


def section(rows: list[Row]) -> list[str]:
    from .common import table

    return [HEADING, "", *table(rows), ""]


def main(argv: list[str] | None = None) -> int:
    return run_standalone("bench.downloads", __doc__.split("\n")[0], "a 10 MB trajectory, 2 rounds", HEADING,
                          RESULTS, downloads, section, argv)


if __name__ == "__main__":
    raise SystemExit(main())
