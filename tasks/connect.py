"""Connection settings and the TolokaClient factory.

The client is built *inside* each task from a `TolokaTarget` (never passed as a task argument: it
holds a token and cannot be hashed into a cache key). The token is read from `TOLOKA_TOKEN` or from
a Prefect Secret block, held as `SecretStr`, and never returned, logged or persisted.
"""

from __future__ import annotations

import os
import warnings

from pydantic import SecretStr

from flows.params import TolokaTarget

TOKEN_ENV = "TOLOKA_TOKEN"
LOCAL_URL_ENV = "CROWDCLUST_LOCAL_URL"


class MissingTokenError(RuntimeError):
    """No token in the environment and no Secret block: say how to provide one."""


def resolve_token(target: TolokaTarget) -> SecretStr:
    """`TOLOKA_TOKEN` first, then the Prefect Secret block named in the target."""
    value = os.environ.get(TOKEN_ENV)
    if value:
        return SecretStr(value)
    try:
        from prefect.blocks.system import Secret

        return SecretStr(Secret.load(target.token_secret_block).get())
    except Exception as exc:  # block missing, no API, ...
        raise MissingTokenError(
            f"no Toloka token: set {TOKEN_ENV} or create a Prefect Secret block "
            f"'{target.token_secret_block}' ({type(exc).__name__})"
        ) from None


def endpoint(target: TolokaTarget) -> str | None:
    """The URL the client talks to: for `local`, `$CROWDCLUST_LOCAL_URL` wins over `target.url`.

    The local service (`make up`) sets that variable for its worker, so deployments keep the default
    emulator address in their parameters and still reach an emulator started on another port (the
    integration test's). Not part of the target, so cache keys do not depend on the port.
    """
    if target.environment == "local":
        return os.environ.get(LOCAL_URL_ENV) or target.url
    return target.url


def make_client(target: TolokaTarget, retries: int = 3):
    """A toloka-kit client for the target (emulator URL, sandbox or production).

    `retries=0` gives a client for non-idempotent creates (see `tasks.setup.find_or_create`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # toloka-kit imports pkg_resources (deprecation warning)
        from toloka.client import TolokaClient

    token = resolve_token(target).get_secret_value()
    url = endpoint(target)
    if url:
        return TolokaClient(token, url=url, retries=retries)
    return TolokaClient(token, environment=target.environment.upper(), retries=retries)
