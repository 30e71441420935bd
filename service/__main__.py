"""``python -m service``: run the API with uvicorn on DLNSIM_HOST:DLNSIM_PORT (one process).

The socket is bound first (``service.listen``): a busy port ends here with one line and exit status 1, before the
Dask cluster starts. When /readyz would answer 200 the service prints one line, ``ready: http://127.0.0.1:8000 —
docs at /docs`` (``service.ready``); uvicorn's own "running on" line is not printed (it came before the workers
were warm).
"""

from __future__ import annotations

import gc
import os
import sys

from service.http_server import guarded_protocol, max_connections, raise_open_files_limit
from service.listen import listen_or_exit, url_of
from service.settings import get_settings


def main() -> None:
    from pydantic import ValidationError

    try:
        settings = get_settings()
    except ValidationError as exc:  # one line, not a traceback: which DLNSIM_* variable, and what is wrong with it
        wrong = "; ".join(f"DLNSIM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"dlnsim: invalid setting: {wrong}", file=sys.stderr)
        raise SystemExit(1) from None
    sock = listen_or_exit(settings.host, settings.port)
    url = url_of(settings.host, sock.getsockname()[1])
    if settings.scheduler:
        workers = f"the workers of {settings.scheduler}"
    else:
        n = settings.workers or os.cpu_count() or 1
        workers = f"{n} worker process{'es' if n > 1 else ''}"
    print(f"dlnsim: starting the API on {url} and {workers} (each loads the compiled kernels first)…", flush=True)
    # Memory a request frees goes back to the system (service/memory.py): before anything allocates much.
    from service.memory import bound_allocator

    bound_allocator()

    # The modules (the app's, Dask's) live as long as the process: frozen out of the cyclic collector's reach once
    # loaded, so its full collections under load no longer walk them (perf under bench/load.py showed gc as a
    # visible share of the API's CPU; docs/performance.md#load). Only here, not in the app's lifespan: a test
    # process starting many apps would freeze, and so keep, every earlier app's garbage cycles.
    import distributed  # noqa: F401 - imported by the lifespan anyway
    import uvicorn

    import service.main

    # The store is checked before anything starts: a damaged file stops the service with what to do, not a traceback.
    from service.jobs.database import StoreDamagedError

    try:
        service.main.open_database(settings).close()
    except StoreDamagedError as exc:
        print(f"dlnsim: not starting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    # the lifespan prints the ready line once /readyz would answer 200
    service.main.app.state.announce_ready = url
    gc.collect()
    gc.freeze()
    # Slow clients (service/http_server.py): header, body and send deadlines, header limits and a cap on open
    # connections that leaves file descriptors for the store and the cluster.
    protocol = guarded_protocol(settings, max_connections(settings, raise_open_files_limit()))
    # One process: the app owns the Dask cluster and the store; more uvicorn workers would each start one.
    config = uvicorn.Config("service.main:app", host=settings.host, port=sock.getsockname()[1],
                            log_level=settings.log_level, workers=1, proxy_headers=True, server_header=False,
                            http=protocol, timeout_keep_alive=settings.keep_alive_seconds)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
