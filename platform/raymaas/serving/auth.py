"""API keys of the model endpoints: where replicas read them, and the check of a request."""

from __future__ import annotations

import hmac
import os

from raymaas.serving.errors import Unauthenticated

# Where replicas read API keys: never the committed YAML, never MLflow params.
API_KEYS_ENV = "RAYMAAS_API_KEYS"  # comma-separated
API_KEYS_FILE_ENV = "RAYMAAS_API_KEYS_FILE"  # one key per line


def load_api_keys() -> frozenset[str]:
    """Keys from RAYMAAS_API_KEYS (comma-separated) and the file RAYMAAS_API_KEYS_FILE names."""
    keys = {k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",")}
    path = os.environ.get(API_KEYS_FILE_ENV)
    if path:
        with open(path) as f:
            keys.update(line.strip() for line in f)
    return frozenset(k for k in keys if k and not k.startswith("#"))


def check_api_key(headers, keys: frozenset[str]) -> None:
    """Raise 401 unless keys are off or the request carries one (Bearer or x-api-key)."""
    if not keys:
        return
    given = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given:
        given_b = given.encode()
        # compare against every key, so the time taken does not say which one nearly matched
        if sum(hmac.compare_digest(given_b, k.encode()) for k in keys):
            return
    raise Unauthenticated("a valid API key is required: send `Authorization: Bearer KEY` or `x-api-key: KEY`")
