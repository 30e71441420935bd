"""Fixtures of the sweep tests: the in-process app with the Engine test double (tests/api), and the
sweep store it opened (sweeps stay queued there: the double has no Dask client)."""

from tests.api.conftest import anyio_backend, service, settings_overrides  # noqa: F401 - fixtures
