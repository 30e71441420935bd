"""``python -m service``: run the API with uvicorn on DLNSIM_HOST:DLNSIM_PORT (one process)."""

from __future__ import annotations

import uvicorn

from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    # One process: the app owns the Dask cluster and the store; more uvicorn workers would each start one.
    uvicorn.run("service.main:app", host=settings.host, port=settings.port, log_level=settings.log_level,
                workers=1, proxy_headers=True, server_header=False)


if __name__ == "__main__":
    main()
