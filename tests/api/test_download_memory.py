"""What a download holds in the API's memory (issue 19.3): an array is decoded straight into its place (not beside
its frame and a shuffled copy), the .npz is written a slice at a time and JSON converts float32 a piece at a time, so
one download holds about its largest array; and every download reserves what it will hold from one budget
(DLNSIM_DOWNLOAD_MEMORY_BYTES) before its first byte, so concurrent downloads cannot add up past it.

Peaks are measured with tracemalloc (numpy reports its allocations to it)."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile
from typing import Any

import numpy as np
import pytest

from service import codec

MB = 1 << 20


def stored(arrays: dict) -> codec.StoredTrajectory:
    blob = codec.pack(arrays)
    return codec.StoredTrajectory(codec.reader_of(blob), len(blob))


def peak_of(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("dtype", "shape"), [("<f8", (7, 5, 3)), ("<f4", (1000,)), ("<i8", (33,)), ("|b1", (9,)),
                                               ("<f8", (0, 4)), ("<f8", (300_000,))])
def test_a_decoded_array_is_the_stored_one_bit_for_bit(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.random(shape) > 0.5) if dtype == "|b1" else (rng.standard_normal(shape) * 1e3).astype(dtype)
    assert np.array_equal(stored({"product": a}).get("product"), a)
    assert stored({"product": a}).get("product").dtype == np.dtype(dtype)


def test_a_truncated_or_altered_frame_is_corrupt():
    a = np.random.default_rng(1).standard_normal(100_000)
    blob = bytearray(codec.pack({"loss": a}))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(codec.CorruptTrajectory):
        codec.StoredTrajectory(codec.reader_of(bytes(blob)), len(blob)).get("loss")


def test_decoding_holds_the_array_and_a_few_megabytes_not_the_frame_and_two_copies():
    a = np.random.default_rng(2).standard_normal((200, 125, 1000))  # 200 MB, incompressible: a 190 MB frame
    s = stored({"product": a})
    peak = peak_of(lambda: s.get("product"))
    assert peak < a.nbytes + 16 * MB, peak / MB  # before: frame + shuffled bytes + array ≈ 3 × 200 MB


def test_the_npz_is_sent_a_slice_at_a_time_and_is_what_numpy_writes():
    a = np.random.default_rng(3).standard_normal((100, 250, 1000))  # 200 MB
    s = stored({"time": np.arange(100.0), "product": a})
    biggest = [0]

    def consume() -> None:
        for piece in codec.iter_npz(s):
            biggest[0] = max(biggest[0], len(piece))

    peak = peak_of(consume)
    assert biggest[0] <= codec.NPY_PIECE_BYTES + MB
    assert peak < a.nbytes + 64 * MB, peak / MB  # before: the array, its .npy bytes and their join ≈ 3 × 200 MB
    with np.load(io.BytesIO(codec.to_npz(s))) as npz:
        assert np.array_equal(npz["product"], a) and np.array_equal(npz["time"], np.arange(100.0))
    reference = io.BytesIO()
    np.lib.format.write_array(reference, a, allow_pickle=False)
    with zipfile.ZipFile(io.BytesIO(codec.to_npz(s))) as z:
        assert z.read("product.npy") == reference.getvalue()


def test_json_converts_float32_a_piece_at_a_time():
    a = np.random.default_rng(4).standard_normal((50, 1000, 1000)).astype(np.float32)  # 200 MB as float32
    s = stored({"product": a})
    peak = peak_of(lambda: [None for _ in codec.iter_json(s, ["product"])])
    # a piece is one record here (10⁶ numbers: ~20 MB of text, made and cut once)
    assert peak < a.nbytes + 96 * MB, peak / MB  # before: the float32 array and a float64 copy: 3 × 200 MB


def test_checking_an_arrays_stored_bytes_reads_them_a_piece_at_a_time():
    # Before the first byte of a download its arrays' frames are checked against their CRC-32: 4 downloads used to
    # read 4 whole frames at once for it, before any budget was asked.
    a = np.random.default_rng(5).standard_normal((100, 250, 1000))  # a 200 MB frame
    s = stored({"product": a})
    assert peak_of(lambda: s.verify(["product"])) < 16 * MB


# ------------------------------------------------------------------------------------------------
# the budget, through the app


def large_job(service: Any, mb: int = 100) -> str:
    row, _ = service.store.create(b"{}", "h")
    records = 50
    product = np.random.default_rng(6).standard_normal((records, mb * MB // (8 * records * 1000), 1000))
    service.finish(row.id, codec.pack({"time": np.arange(float(records)), "product": product}))
    return row.id


def test_downloads_wait_for_the_budget_then_get_503_and_a_dropped_one_gives_its_share_back(tmp_path):
    import httpx

    from tests.support.inprocess import serving

    with serving(tmp_path, download_memory_bytes=256 * MB, download_wait_seconds=0.2) as (url, app):
        store = app.state.store
        row, _ = store.create(b"{}", "h")
        store.mark_running(row.id)
        records = 50
        product = np.random.default_rng(6).standard_normal((records, 100 * MB // (8 * records * 1000), 1000))
        store.finish(row.id, codec.pack({"time": np.arange(float(records)), "product": product}), "completed")
        budget = app.state.downloads
        path = f"/v1/simulations/{row.id}/trajectory.npz"
        with httpx.Client(base_url=url, timeout=60) as first, first.stream("GET", path) as response:
            assert response.status_code == 200 and budget.held > 100 * MB
            with httpx.Client(base_url=url, timeout=60) as second:
                busy = second.get(path)  # 2 × ~150 MB > 256 MB
            assert busy.status_code == 503 and busy.headers["content-type"] == "application/problem+json"
            assert busy.headers["retry-after"] == "5" and "DLNSIM_DOWNLOAD_MEMORY_BYTES" in busy.json()["detail"]
            next(response.iter_raw(1 << 16))  # one piece, then the client goes away
        for _ in range(200):
            if budget.held == 0:
                break
            time.sleep(0.05)
        assert budget.held == 0
        with httpx.Client(base_url=url, timeout=60) as c:
            again = c.get(path)
        assert again.status_code == 200 and len(again.content) > 95 * MB


@pytest.mark.anyio
@pytest.mark.parametrize("settings_overrides", [{"download_memory_bytes": 256 * MB}])
async def test_a_netcdf_that_could_never_fit_the_budget_is_refused_naming_what_to_ask_for(service):
    from tests.api.conftest import assert_problem

    job_id = large_job(service)  # netCDF is built whole: ~4 × 100 MB
    problem = assert_problem(await service.client.get(f"/v1/simulations/{job_id}/trajectory.nc"), 422,
                             "limit-exceeded")
    assert problem["errors"][0]["field"] == ["fields"] and "npz" in problem["errors"][0]["fix"]
    small = await service.client.get(f"/v1/simulations/{job_id}/trajectory.nc", params={"fields": "time"})
    assert small.status_code == 200
    assert service.app.state.downloads.held == 0
