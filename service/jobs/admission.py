"""Admission control: what a request may cost before the service takes it (issue 19.2, 19.4, 19.5).

    admission = Admission(settings, db, job_store, sweep_store)
    async with admission.validating(len(body)) as ticket:    # a large body waits for a validation slot
        cost = ...                                            # service.limits.request_cost: from the request alone
        await ticket.hold_if(cost)                            # so does a costly validation
        ...validate in a thread...
    await admission.check_budgets(owner, cost)                # the key's compute budget and storage quota, the disk

* **The parse.** A body's parse is the first cost, known from its size before it starts: about 110 FLOP-equivalents and
  7 bytes of memory per byte. Over DLNSIM_MAX_VALIDATION_BYTES it is refused before it is parsed (413); its FLOPs count
  with the validation's against DLNSIM_MAX_VALIDATION_FLOPS (``Ticket.admit``).
* **Validation slots.** Validating a request is CPU and memory in the API process: one with a body over
  HEAVY_BODY_BYTES (its parse alone takes ~10 ns a byte and ~7 bytes of memory per byte) or a cost over HEAVY_FLOPS
  holds one of DLNSIM_VALIDATION_CONCURRENCY slots, so that the API spends at most that many cores' worth on
  validation at once and its memory is bounded by that many requests; light requests never wait. A request that
  waits longer than DLNSIM_VALIDATION_WAIT_SECONDS for a slot is answered 503 with Retry-After.
* **A key's share of the queue.** DLNSIM_MAX_ACTIVE_PER_KEY, or, when it is unset and API keys name two or more
  owners, each owner's fair share of DLNSIM_MAX_QUEUED (the queue divided by the owners, at least 1): one key cannot
  fill the queue for all (``per_key_limit``; the check itself is ``submission._Jobs._check_active_limit``).
* **A key's compute budget.** The estimated FLOPs of its queued and running simulations and sweeps (stored with each
  at admission), plus this one's, must stay within DLNSIM_MAX_KEY_FLOPS → 429 compute-budget-exceeded.
* **A key's storage quota.** Its stored results, plus the most its running work will store, plus this request's,
  within DLNSIM_STORAGE_QUOTA_BYTES → 429 storage-quota-exceeded (deleting results frees it).
* **The disk.** The store's free space (disk and free pages, within DLNSIM_STORE_MAX_BYTES) must hold the results of
  everything queued or running and of this request — twice: a result goes through the WAL before the file — and
  keep DLNSIM_STORE_MIN_FREE_BYTES besides → 507 insufficient-storage with Retry-After. So work is refused while it
  can still be refused, instead of results that have nowhere to go.

Keys off: every caller is one key (owner None) for the budget and the quota.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from service.limits import Cost, Limits
from service.problems import ProblemError
from service.settings import Settings

from .database import Database

HEAVY_BODY_BYTES = 1 << 20
HEAVY_FLOPS = 1e8
# Parsing a JSON body (pydantic: its own tree, then Python objects): FLOP-equivalents and bytes held per byte.
PARSE_FE_PER_BYTE = 110.0
PARSE_BYTES_PER_BYTE = 7
# A full disk or a spent quota is freed by an operator or by the caller's own deletes, not in a second.
STORAGE_RETRY_AFTER = 30
BUDGET_RETRY_AFTER = 10


class Ticket:
    """One request's place in validation: ``admit(cost)`` checks its parse and validation together against the budget,
    and takes a slot for a costly validation (once)."""

    def __init__(self, admission: Admission, body_bytes: int = 0) -> None:
        self._admission, self.held = admission, False
        self.parse_flops = PARSE_FE_PER_BYTE * body_bytes

    async def hold(self) -> None:
        if self.held:
            return
        try:
            await asyncio.wait_for(self._admission._slots.acquire(), self._admission.settings.validation_wait_seconds)
        except TimeoutError:
            raise ProblemError(
                503, "unavailable", f"the service is busy validating {self._admission.settings.validation_concurrency} "
                "other large requests (DLNSIM_VALIDATION_CONCURRENCY); retry after the Retry-After delay",
                headers={"Retry-After": "2"}) from None
        self.held = True

    async def admit(self, cost: Cost, field: list[str | int] | None = None) -> None:
        limit = self._admission.settings.max_validation_flops
        total = cost.validation_flops + self.parse_flops
        if total > limit:
            from service.problems import one_field_problem

            raise one_field_problem(
                422, "limit-exceeded", field or [], "limit_exceeded",
                f"parsing this body and validating the request would cost about {total:.3g} FLOP-equivalents, above "
                f"this service's limit of {limit:.3g} (DLNSIM_MAX_VALIDATION_FLOPS)",
                "send a smaller body (the correlations instead of a large dataset) or a smaller problem")
        if total > HEAVY_FLOPS or cost.validation_bytes > 64 * HEAVY_BODY_BYTES:
            await self.hold()

    def release(self) -> None:
        if self.held:
            self.held = False
            self._admission._slots.release()


class Admission:
    """Validation slots, a key's compute budget and storage quota, the disk's room (module docstring)."""

    def __init__(self, settings: Settings, db: Database, *stores: Any, key_owners: int = 0) -> None:
        """``key_owners``: how many owners the API keys name (0: keys off)."""
        self.settings, self.db, self.key_owners = settings, db, key_owners
        self.stores = [s for s in stores if s is not None]
        self.limits = Limits.from_settings(settings)
        self._slots = asyncio.Semaphore(settings.validation_concurrency)

    def per_key_limit(self) -> tuple[int | None, str]:
        """(simulations plus sweeps one key may have queued or running, where that number comes from)."""
        if self.settings.max_active_per_key is not None:
            return self.settings.max_active_per_key, "DLNSIM_MAX_ACTIVE_PER_KEY"
        owners = self.key_owners
        if owners < 2:
            return None, ""
        share = (f"each of the {owners} API keys' share of DLNSIM_MAX_QUEUED={self.settings.max_queued}; "
                 "DLNSIM_MAX_ACTIVE_PER_KEY sets it")
        return max(1, self.settings.max_queued // owners), share

    @property
    def waiting(self) -> int:
        """Slots in use (for tests and diagnostics)."""
        return self.settings.validation_concurrency - self._slots._value

    @asynccontextmanager
    async def validating(self, body_bytes: int) -> AsyncIterator[Ticket]:
        """A request's validation: its body's parse checked against DLNSIM_MAX_VALIDATION_BYTES before it starts
        (413), a slot held from the start for a large body."""
        held = PARSE_BYTES_PER_BYTE * body_bytes
        if held > self.settings.max_validation_bytes:
            from service.problems import field_error

            limit = self.settings.max_validation_bytes
            raise ProblemError(
                413, "body-too-large", f"parsing a body of {body_bytes} bytes holds about {held >> 20} MiB, above this "
                f"service's limit of {limit >> 20} MiB (DLNSIM_MAX_VALIDATION_BYTES): it is refused before it is read "
                "into objects", errors=[field_error([], "body_too_large", f"the body is {body_bytes} bytes",
                                                    f"send at most {limit // PARSE_BYTES_PER_BYTE} bytes: the "
                                                    "correlations instead of a large dataset")])
        ticket = Ticket(self, body_bytes)
        try:
            if body_bytes > HEAVY_BODY_BYTES:
                await ticket.hold()
            yield ticket
        finally:
            ticket.release()

    async def check_budgets(self, owner: str | None, cost: Cost) -> None:
        """The key's compute budget and storage quota, and the disk's room, for a request of ``cost``."""
        usage = await asyncio.to_thread(self._usage, owner)
        who = "this API key" if owner is not None else "callers together"
        limit = self.settings.max_key_flops
        if usage["flops"] + cost.run_flops > limit:
            raise ProblemError(
                429, "compute-budget-exceeded",
                f"{who} already has about {usage['flops']:.3g} floating-point operations of simulations and sweeps "
                f"queued or running; this one needs about {cost.run_flops:.3g} more, and the limit is {limit:.3g} "
                "(DLNSIM_MAX_KEY_FLOPS): retry once some have finished, or cancel what you no longer need",
                headers={"Retry-After": str(BUDGET_RETRY_AFTER)})
        quota = self.settings.storage_quota_bytes
        used = usage["stored"] + usage["expected"]
        if used + cost.result_bytes > quota:
            raise ProblemError(
                429, "storage-quota-exceeded",
                f"{who} stores {usage['stored']} bytes of results and its queued and running work may store "
                f"{usage['expected']} more; this request's results may take {cost.result_bytes}, above the quota of "
                f"{quota} bytes (DLNSIM_STORAGE_QUOTA_BYTES): delete simulations or sweeps you no longer need "
                "(DELETE /v1/simulations/{id}), or record less (fewer points, record.weights false)",
                headers={"Retry-After": str(STORAGE_RETRY_AFTER)})
        need = 2 * (usage["reserved"] + cost.result_bytes) + self.settings.store_min_free_bytes
        if usage["free"] < need:
            raise ProblemError(
                507, "insufficient-storage",
                f"the job store's disk has {usage['free']} bytes free (DLNSIM_DATA_DIR, or its DLNSIM_STORE_MAX_BYTES "
                f"cap): not enough for the results of the work already queued or running and of this request "
                f"({need} bytes with the WAL's copy and the {self.settings.store_min_free_bytes} kept free, "
                "DLNSIM_STORE_MIN_FREE_BYTES), so nothing was stored: retry after the Retry-After delay; the operator "
                "frees space by deleting old simulations or growing the volume",
                headers={"Retry-After": str(STORAGE_RETRY_AFTER)})

    def _usage(self, owner: str | None) -> dict[str, int | float]:
        flops = stored = expected = reserved = 0
        for store in self.stores:
            f, e = store.active_cost(owner)
            flops, expected = flops + f, expected + e
            stored += store.stored_bytes(owner)
            reserved += store.active_cost(None)[1] if owner is not None else e
        free = self.db.free_bytes()
        if free > self.settings.store_min_free_bytes + (2 << 20):
            self.db.restore_reserve()  # the room kept for status changes, after a full disk used it
        return {"flops": flops, "stored": stored, "expected": expected, "reserved": reserved, "free": free}
