"""Fuzz profiles and the service limits the fuzzed app runs with.

DLNSIM_FUZZ_PROFILE selects the profile: ``ci`` (default; part of `make test`: a few hundred cases,
derandomized so a CI failure reproduces) or ``full`` (`make fuzz`: more than 10,000 cases, random seeds,
plus schemathesis' coverage phase of boundary and negative values for every parameter).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    # Hypothesis examples per operation in the broad stateless test (positive and negative data).
    stateless_examples: int
    # Examples per creating operation in the accepted-requests test (POST /v1/simulations, /v1/sweeps).
    accepted_examples: int
    # Stateful phase: scenarios, and steps per scenario.
    stateful_scenarios: int
    stateful_steps: int
    # schemathesis' coverage phase: deterministic boundary values and one negative value per constraint.
    coverage_phase: bool
    derandomize: bool
    # The run must reach this many requests (checked at the end: a silently shrunken run fails).
    min_cases: int


PROFILES = {
    "ci": Profile("ci", stateless_examples=12, accepted_examples=25, stateful_scenarios=12, stateful_steps=8,
                  coverage_phase=False, derandomize=True, min_cases=300),
    "full": Profile("full", stateless_examples=500, accepted_examples=600, stateful_scenarios=250, stateful_steps=12,
                    coverage_phase=True, derandomize=False, min_cases=10_000),
}


def current() -> Profile:
    name = os.environ.get("DLNSIM_FUZZ_PROFILE", "ci")
    if name not in PROFILES:
        raise ValueError(f"DLNSIM_FUZZ_PROFILE={name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]


# Limits small enough that every accepted simulation runs in milliseconds on the one worker (the fuzzer
# must never wait on numerics), large enough for the OpenAPI request examples (hierarchy depth 3: 8 × 15,
# hidden 16, 200 record points, 800 GD steps) to be accepted.
LIMITS = {
    "max_dimension": 16,
    "max_layers": 4,
    "max_matrix_entries": 256,
    "max_steps": 1000,
    "max_record_points": 200,
    "max_dataset_values": 2000,
    "max_trajectory_values": 100_000,
    "max_sweep_points": 8,
    "max_active_sweeps": 16,
    "sweep_chunk_size": 8,
    "max_queued": 256,
    "max_wait_seconds": 1,
    "max_body_bytes": 65536,
}


# What the run did, for the terminal summary and the final case-count check: (test, method, path, status) -> n.
STATS: Counter = Counter()
