"""Probe: would splitting a GD step's products between two one-thread BLAS calls beat OpenBLAS's own threads?

    python -m bench.split_step            10 interleaved rounds of 1,000 (300,300,300) steps each (~1.5 min)
    python -m bench.split_step --rounds 4
    python -m bench.split_step --spells 120   the 2-thread GEMM rate of this machine in 10-s windows, 2 min

Not part of ``make bench``: a measurement for the next change to the kernel, not a figure of the service.

Why: on a shared 2-core VM a 2-thread OpenBLAS (300,300,300) GEMM runs a third slower in busy spells than in quiet
ones (docs/performance.md#cores), and a GD step (four such products with OpenBLAS's fork and join around each)
follows it, so a lone job through the service reaches 0.8 of the GEMM bound only in quiet spells. Both sides here
are plain numpy, the same products and update as the compiled kernel's two-layer step:

* **OpenBLAS threads** — each product one call on a 2-thread pool (what the kernel does today);
* **split** — two Python threads, each on a one-thread pool, computing half of the rows of X = W21 Σ11 and of
  E = Σ31 − W32 X, then one of the two gradient products each, then one of the two updates, with a barrier
  between phases (4 a step; a compiled version would replace Python's barrier with a spin on a shared flag).

Rounds alternate the two sides, so a slow spell of the machine falls on both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

from .common import settle
from .stepping import LEARNING_RATE, make_problem

SIZE = 300
STEPS = 1000


class TwoLayerStep:
    """The buffers of a two-layer GD step on one problem, and the two ways of running its steps."""

    def __init__(self, n: int = SIZE) -> None:
        problem, (w21, w32) = make_problem(n, n, n)
        self.s11, self.s31 = problem.sigma11, problem.sigma31
        self.w21, self.w32 = w21.copy(), w32.copy()
        self.x, self.e = np.empty_like(self.w21), np.empty_like(self.s31)
        self.g21, self.g32 = np.empty_like(self.w21), np.empty_like(self.w32)
        self.two_eta = 2 * LEARNING_RATE

    def openblas_threads(self, steps: int) -> None:
        """X = W21 Σ11, E = Σ31 − W32 X, G32 = E W21ᵀ, G21 = W32ᵀ E, W += 2η G: one BLAS call a product."""
        w21, w32, s11, s31, x, e, g21, g32 = (self.w21, self.w32, self.s11, self.s31, self.x, self.e, self.g21,
                                              self.g32)
        for _ in range(steps):
            np.matmul(w21, s11, out=x)
            np.matmul(w32, x, out=e)
            np.subtract(s31, e, out=e)
            np.matmul(e, w21.T, out=g32)
            np.matmul(w32.T, e, out=g21)
            np.multiply(g32, self.two_eta, out=g32)
            np.multiply(g21, self.two_eta, out=g21)
            np.add(w32, g32, out=w32)
            np.add(w21, g21, out=w21)

    def split(self, steps: int) -> None:
        """The same steps, the rows of X and E halved between two threads, one gradient and update each."""
        barrier = threading.Barrier(2)
        half = self.x.shape[0] // 2

        def part(which: int) -> None:
            rows = slice(0, half) if which == 0 else slice(half, None)
            erows = slice(0, self.e.shape[0] // 2) if which == 0 else slice(self.e.shape[0] // 2, None)
            w21, w32, x, e = self.w21, self.w32, self.x, self.e
            for _ in range(steps):
                np.matmul(w21[rows], self.s11, out=x[rows])
                barrier.wait()
                np.matmul(w32[erows], x, out=e[erows])
                np.subtract(self.s31[erows], e[erows], out=e[erows])
                barrier.wait()
                if which == 0:
                    np.matmul(e, w21.T, out=self.g32)
                    np.multiply(self.g32, self.two_eta, out=self.g32)
                else:
                    np.matmul(w32.T, e, out=self.g21)
                    np.multiply(self.g21, self.two_eta, out=self.g21)
                barrier.wait()  # both gradients use the old weights
                if which == 0:
                    np.add(w32, self.g32, out=w32)
                else:
                    np.add(w21, self.g21, out=w21)
                barrier.wait()

        helper = threading.Thread(target=part, args=(1,))
        helper.start()
        part(0)
        helper.join()


def measure(rounds: int, steps: int = STEPS) -> dict[str, list[float]]:
    """steps/s of each side, rounds alternating."""
    step = TwoLayerStep()
    sides = {"openblas threads": (step.openblas_threads, 2), "split": (step.split, 1)}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for name, (run, threads) in sides.items():  # warm-up
        with threadpool_limits(threads):
            run(10)
    for _ in range(rounds):
        for name, (run, threads) in sides.items():
            with threadpool_limits(threads):
                settle()
                t0 = time.perf_counter()
                run(steps)
                rates[name].append(steps / (time.perf_counter() - t0))
    return rates


def spells(seconds: float, window: float = 10.0, n: int = SIZE) -> list[tuple[float, float]]:
    """(mean, best) GFLOP/s of back-to-back 2-thread n³ GEMMs in each ``window`` seconds: the machine's quiet and
    busy spells, as a job of that length meets them (best: over batches of 30 products, ~20 ms)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    c = np.empty((n, n))
    flops = 2 * n ** 3 * 30
    out = []
    with threadpool_limits(2):
        for _ in range(max(1, int(seconds / window))):
            t_start, done, best = time.perf_counter(), 0, 0.0
            while time.perf_counter() - t_start < window:
                t0 = time.perf_counter()
                for _ in range(30):
                    np.matmul(a, b, out=c)
                best = max(best, flops / (time.perf_counter() - t0))
                done += 1
            out.append((done * flops / (time.perf_counter() - t_start) / 1e9, best / 1e9))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--spells", type=float, metavar="SECONDS",
                        help="instead: 2-thread GEMM GFLOP/s (mean/best) in 10-s windows for SECONDS")
    args = parser.parse_args(argv)
    if args.spells:
        print(f"2-thread ({SIZE},{SIZE},{SIZE}) GEMM, GFLOP/s mean/best per 10 s: "
              + " ".join(f"{m:.0f}/{b:.0f}" for m, b in spells(args.spells)))
        return 0
    rates = measure(args.rounds)
    for name, r in rates.items():
        print(f"{name:17s} median {statistics.median(r):6.0f} steps/s, best {max(r):6.0f}   "
              + " ".join(f"{v:.0f}" for v in r))
    ratios = [s / o for s, o in zip(rates["split"], rates["openblas threads"], strict=True)]
    print(f"split / openblas threads, per round: median ×{statistics.median(ratios):.3f}, "
          f"best-to-best ×{max(rates['split']) / max(rates['openblas threads']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
