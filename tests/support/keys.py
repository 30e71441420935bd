"""API keys for the access tests: three owners (alice named, bob by SHA-256 only, carol unnamed) and their headers."""

from __future__ import annotations

import hashlib

TOKEN_A = "alice-token-0123456789abcdef"
TOKEN_B = "bob-token-0123456789abcdef"
TOKEN_C = "carol-token-0123456789abcdef"
# alice: named token; bob: named SHA-256 only (the secret is not in the setting); carol: unnamed token.
KEYS = f"alice:{TOKEN_A}, bob:sha256:{hashlib.sha256(TOKEN_B.encode()).hexdigest()}, {TOKEN_C}"
KEYS_ON = {"api_keys": KEYS}

A = {"Authorization": f"Bearer {TOKEN_A}"}
B = {"Authorization": f"Bearer {TOKEN_B}"}
C = {"Authorization": f"Bearer {TOKEN_C}"}
