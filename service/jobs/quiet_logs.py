"""Expected outcomes are not errors: a task that stops because its user cancelled it (``JobCancelled``) or ends with
the failure it reports for its request (``JobFailed``, recorded as the job's problem) is not logged by its Dask worker
as "Compute Failed" with a traceback. A crash (any other exception) still is.

    install_worker_log_filter()      # on each worker (the warm-up and embedded-worker plugins call it)
"""

from __future__ import annotations

import logging

EXPECTED = ("JobCancelled", "JobFailed")


class ExpectedTaskEndFilter(logging.Filter):
    """Drops distributed.worker's "Compute Failed" records whose exception is an expected end of a task."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith("Compute Failed"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        exception = str(args[3]) if len(args) > 3 else record.getMessage()
        return not any(exception.startswith(name) or f".{name}(" in exception for name in EXPECTED)


def install_worker_log_filter() -> None:
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, ExpectedTaskEndFilter) for f in logger.filters):
        logger.addFilter(ExpectedTaskEndFilter())
