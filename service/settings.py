"""Service settings, all from DLNSIM_* environment variables (pydantic-settings).

    DLNSIM_HOST=0.0.0.0 DLNSIM_PORT=9000 DLNSIM_DATA_DIR=/var/lib/dlnsim python -m service

The limits exist so that one request cannot take the service down: they are checked before anything
is queued and a request over a limit gets a 422 problem naming the field and the limit.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DLNSIM_", extra="ignore")

    # Where the service listens (python -m service / make run).
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    # Slow and greedy clients (service/http_server.py, README "Settings and limits"): a request's line and headers
    # must arrive within header_timeout_seconds; its body within body_timeout_seconds plus one second per
    # min_body_rate bytes received; a response whose client reads nothing for send_timeout_seconds is dropped; an
    # idle keep-alive connection is closed after keep_alive_seconds. At most max_connections connections are open
    # (more are answered 503), a request has at most max_header_bytes of line and headers and max_headers fields.
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(10.0, gt=0)
    min_body_rate: int = Field(8192, ge=1)
    send_timeout_seconds: float = Field(60.0, gt=0)
    keep_alive_seconds: int = Field(5, ge=1)
    max_connections: int = Field(1000, ge=16)
    max_header_bytes: int = Field(16384, ge=1024)
    max_headers: int = Field(100, ge=8)

    # The job store (SQLite file dlnsim.sqlite3) lives here; created on start.
    data_dir: Path = Path("./data")
    # Largest size of the job store file, in bytes (None: as large as the disk allows). Beyond it, as on a
    # full disk, writes are refused: new submissions get 507 and a finished job whose result does not fit fails (507).
    store_max_bytes: int | None = Field(None, ge=1 << 20)
    # How long a store write waits for a lock held by another connection before it gives up (the API then answers
    # 503 with Retry-After; the engines retry the write itself, never the computation).
    store_busy_timeout_seconds: float = Field(5.0, gt=0)
    # Free space the store keeps beyond what running work will write: a request whose results would not leave this
    # much free is refused with 507 (insufficient-storage), and below it /readyz answers 503 (storage full).
    store_min_free_bytes: int = Field(16 << 20, ge=0)
    # The WAL is cut back to this many bytes whenever it is reset (PRAGMA journal_size_limit).
    wal_max_bytes: int = Field(64 << 20, ge=1 << 20)

    # Dask: None = an embedded LocalCluster started with the app; "tcp://host:8786" = an existing one.
    scheduler: str | None = None
    # Embedded cluster size: worker processes (one thread each); None = one per core.
    workers: int | None = Field(None, ge=1)
    # BLAS threads of a running job: "auto" = its share of the host's cores (all of them for a lone job, one
    # each when every core has a job), re-decided between chunks of steps (service/jobs/cores.py); a number
    # fixes the count per worker process.
    blas_threads: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    # Read by the workers from their environment (service/jobs/cores.py; embedded workers inherit the API's):
    # the host's core ledger directory, shared by every worker on the host (None: one per user in $TMPDIR),
    # and the cores its jobs share (None: the worker's CPU affinity).
    cores_dir: Path | None = None
    host_cores: int | None = Field(None, ge=1)
    # Nice value added to the embedded cluster's worker processes (0 = same priority as the API): batch
    # numerics yield the CPU to interactive requests on a shared machine (README "Embedded default").
    worker_nice: int = Field(10, ge=0, le=19)

    # Request body cap, checked on Content-Length and on the bytes actually received (413 beyond it). 32 MiB: its
    # parse (~0.35 s of a core, ~220 MB of objects) stays within the validation budget below.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Largest width anywhere in the network: n_in, n_out and every hidden layer.
    max_dimension: int = Field(16384, ge=1)
    # Largest matrix a run holds, in entries: Σ11 (n_in²), Σ31 and W (n_out·n_in), each layer.
    # 25e6 float64 = 200 MB per copy.
    max_matrix_entries: int = Field(25_000_000, ge=1)
    # Deepest network: number of weight matrices (len(hidden) + 1).
    max_layers: int = Field(32, ge=1)
    # Largest number of GD steps; also the most integrator steps a flow run may take (a stiff problem
    # over a long t_max fails with a limit-exceeded problem instead of holding a worker for hours).
    max_steps: int = Field(10_000_000, ge=1)
    # Largest number of record points (record.points, or len(record.times)).
    max_record_points: int = Field(10_000, ge=2)
    # Largest dataset, as N × (n_in + n_out) numbers.
    max_dataset_values: int = Field(8_000_000, ge=1)
    # Largest trajectory, as numbers: points × (n_out·n_in [+ all layer sizes when record.weights]).
    max_trajectory_values: int = Field(50_000_000, ge=1)
    # The cost model (service/limits.py request_cost), checked from the request alone before anything is built:
    # what validating one request may cost the API, in FLOP-equivalents (1e10 ≈ a second of one core) and in
    # bytes held at once, and what one job may compute, in floating-point operations (422 limit-exceeded beyond).
    max_validation_flops: float = Field(4e9, gt=0)
    max_validation_bytes: int = Field(256 << 20, ge=1 << 20)
    max_job_flops: float = Field(1e15, gt=0)
    # Requests whose validation is heavy (a body over 1 MiB, or over 1e8 FLOP-equivalents) are validated this many
    # at a time; one that waits longer than validation_wait_seconds for its turn gets 503 with Retry-After.
    validation_concurrency: int = Field(2, ge=1)
    validation_wait_seconds: float = Field(10.0, gt=0)
    # Per API key (all callers together without keys): the estimated FLOPs of its queued and running simulations
    # and sweeps (429 beyond), and the bytes its stored results plus the expected results of its running work may
    # take in the store (429 storage-quota-exceeded beyond; DELETE frees it).
    max_key_flops: float = Field(4e15, gt=0)
    storage_quota_bytes: int = Field(10 << 30, ge=1 << 20)
    # Memory all trajectory downloads together may hold in the API (service/jobs/downloads.py): each reserves what it
    # will hold (about its largest array; netCDF, built whole, four times its arrays) before its first byte, waiting
    # up to download_wait_seconds for room (then 503 with Retry-After); one that could never fit is a 422.
    download_memory_bytes: int = Field(1 << 30, ge=64 << 20)
    download_wait_seconds: float = Field(10.0, gt=0)
    # Most Hessian-vector products record.sharpness may plan: records × sharpness_k × 100 (a typical Lanczos count
    # per eigenvalue; each product costs about two GD steps).
    max_hessian_products: int = Field(10_000_000, ge=1)
    # Jobs queued or running at once; beyond it POST answers 429 with Retry-After.
    max_queued: int = Field(64, ge=1)
    # Largest sweep, in points (the product of the grid's axis lengths, or the explicit points).
    max_sweep_points: int = Field(10_000, ge=1)
    # Sweeps queued or running at once; beyond it POST /v1/sweeps answers 429 with Retry-After.
    max_active_sweeps: int = Field(8, ge=1)
    # Most sweep points per worker task (one simulate_batch call); a group of points that share shapes
    # and method is also split into at least one chunk per worker.
    sweep_chunk_size: int = Field(128, ge=1)
    # Upper bound of Prefer: wait=N (larger values are clamped to it).
    max_wait_seconds: int = Field(60, ge=0, le=600)
    # Retry-After sent with 202s, not-terminal GETs and 429s.
    retry_after_seconds: int = Field(1, ge=1)

    # Access (README "Access"). API keys, comma-separated: "token", "name:token", "sha256:<hex>" or
    # "name:sha256:<hex>"; unset = no keys, every route open. A secret, so never shown in a repr.
    api_keys: SecretStr | None = None
    # The secret of unnamed keys' owner ids (HMAC-SHA256 of the token's hash): unset = a random one kept in
    # DLNSIM_DATA_DIR/owner-secret, made on first start. Like the keys, never passed on to the workers.
    owner_secret: SecretStr | None = None
    # Browser origins allowed by CORS, comma-separated (e.g. https://lab.example.org; "*" = any);
    # unset = no CORS headers at all.
    cors_origins: str | None = None
    # Simulations plus sweeps queued or running per API key (all callers together when keys are off);
    # beyond it POST answers 429 with Retry-After. Unset = only the global limits above.
    max_active_per_key: int | None = Field(None, ge=1)

    # Retention (README "Retention"): finished simulations and sweeps are deleted this many days after
    # they finished (0 = kept forever), by a background purge that runs every interval.
    retention_days: float = Field(30, ge=0)
    retention_interval_seconds: float = Field(3600, gt=0)
    # An Idempotency-Key is kept at least this long after its request, whatever becomes of what it created (a retry
    # of a deleted simulation's request is answered 410, not run again).
    idempotency_keep_hours: float = Field(24.0, ge=24.0)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
