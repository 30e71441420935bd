"""The service's listening socket, bound before anything slow starts, and the one line said when it cannot be.

    sock = listen_or_exit(host, port)   # python -m service: bind first, then start the cluster, then serve on sock
    python3 -m service.listen           # make run: the same check with the system python, before installing

Standard library only, so that ``make run`` can ask it before the venv exists: a busy port is reported in a second,
not after the install and the kernel compile. Binding before the app starts also means a busy port never starts
(and then tears down) the Dask cluster, which is what used to print some 60 lines of tracebacks; and with
``DLNSIM_PORT=0`` the port the system chose is known for the ready line.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def address_from_env() -> tuple[str, int]:
    """(DLNSIM_HOST, DLNSIM_PORT) as the settings read them (service/settings.py: same names and defaults)."""
    host = os.environ.get("DLNSIM_HOST", DEFAULT_HOST).strip() or DEFAULT_HOST
    port = os.environ.get("DLNSIM_PORT", str(DEFAULT_PORT)).strip()
    if not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"dlnsim: DLNSIM_PORT={port!r} is not a port number (0 to 65535); e.g. DLNSIM_PORT=8001 "
                         "make run")
    return host, int(port)


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def why_not(host: str, port: int, exc: OSError) -> str:
    """The one line that says why the service cannot listen there and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return (f"dlnsim: port {port} on {host} is already in use (another dlnsim, or another server); "
                f"choose another port: DLNSIM_PORT={port + 1 if port < 65535 else 8001} make run")
    if exc.errno == errno.EACCES:
        return (f"dlnsim: not allowed to listen on port {port} (ports below 1024 need privileges); "
                "choose another port: DLNSIM_PORT=8000 make run")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        return (f"dlnsim: cannot listen on host {host!r} (not an address of this machine); "
                "choose another: DLNSIM_HOST=127.0.0.1 make run")
    return f"dlnsim: cannot listen on {host}:{port}: {exc.strerror or exc}; choose another with DLNSIM_HOST/DLNSIM_PORT"


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening (uvicorn listens on it once the app has started);
    raises OSError. SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT by a stopped service is free, a port
    another process listens on is not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def listen_or_exit(host: str, port: int) -> socket.socket:
    """``bind``, or print the one line of ``why_not`` on stderr and exit with status 1 (no traceback)."""
    try:
        return bind(host, port)
    except OSError as exc:
        print(why_not(host, port, exc), file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def check() -> int:
    """Exit status 0 if the service could listen at DLNSIM_HOST:DLNSIM_PORT now, else 1 after the one line."""
    try:
        host, port = address_from_env()
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        bind(host, port).close()
    except OSError as exc:
        print(why_not(host, port, exc), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(check())
