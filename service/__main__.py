"""``python -m service``: run the API with uvicorn on DLNSIM_HOST:DLNSIM_PORT (one process)."""

from __future__ import annotations

import gc
import sys

import uvicorn

from service.http_server import guarded_protocol, max_connections, raise_open_files_limit
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    # Memory a request frees goes back to the system (service/memory.py): before anything allocates much.
    from service.memory import bound_allocator

    bound_allocator()
    # The modules (the app's, Dask's) live as long as the process: frozen out of the cyclic collector's reach once
    # loaded, so its full collections under load no longer walk them (perf under bench/load.py showed gc as a
    # visible share of the API's CPU; docs/performance.md#load). Only here, not in the app's lifespan: a test
    # process starting many apps would freeze, and so keep, every earlier app's garbage cycles.
    import distributed  # noqa: F401 - imported by the lifespan anyway

    import service.main  # noqa: F401 - what uvicorn.run imports below

    # The store is checked before anything starts: a damaged file stops the service with what to do, not a traceback.
    from service.jobs.database import StoreDamagedError

    try:
        service.main.open_database(settings).close()
    except StoreDamagedError as exc:
        print(f"dlnsim: not starting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    gc.collect()
    gc.freeze()
    # Slow clients (service/http_server.py): header, body and send deadlines, header limits and a cap on open
    # connections that leaves file descriptors for the store and the cluster.
    protocol = guarded_protocol(settings, max_connections(settings, raise_open_files_limit()))
    # One process: the app owns the Dask cluster and the store; more uvicorn workers would each start one.
    uvicorn.run("service.main:app", host=settings.host, port=settings.port, log_level=settings.log_level,
                workers=1, proxy_headers=True, server_header=False, http=protocol,
                timeout_keep_alive=settings.keep_alive_seconds)


if __name__ == "__main__":
    main()
