"""An asyncio event loop in a background thread, for tests that drive an async engine from synchronous code."""

from __future__ import annotations

import asyncio
import inspect
import threading

# Generous bound for things that take ~0.1 s (a round trip through the scheduler, a store write):
# only reached when something is broken, so it costs nothing when tests pass.
PATIENCE = 30.0


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, awaitable, timeout: float = PATIENCE):
        return asyncio.run_coroutine_threadsafe(awaitable, self.loop).result(timeout)

    def call(self, fn, timeout: float = PATIENCE):
        """Run fn() on the loop and await what it returns (the async client's methods must be
        called on its own loop: called from another thread they block instead)."""
        async def wrapper():
            result = fn()
            return await result if inspect.isawaitable(result) else result

        return self.run(wrapper(), timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
