"""Use the flyte-auth-agent sidecar from inside a Flyte task.

- :func:`token` -- a token the agent keeps fresh for the task, by name.
- :func:`admin_token` -- the executor-bound FlyteAdmin token.
- :func:`remote.default` -- a ``FlyteRemote`` that talks to FlyteAdmin through the agent.
- :func:`with_tokens` -- declare a task's token requests with flytekit's ``OAuth2TokenRequest``.

Importing this package does not import flytekit; :mod:`flyte_auth_agent.remote` does so only
when a remote is built.
"""

from . import remote
from ._client import DEFAULT_SOCKET, TokenError, admin_token, socket_path, token
from .tokens import Extended, TokenRequestError, extend, with_tokens

__all__ = [
    "DEFAULT_SOCKET",
    "Extended",
    "TokenError",
    "TokenRequestError",
    "admin_token",
    "extend",
    "remote",
    "socket_path",
    "token",
    "with_tokens",
]
__version__ = "0.1.0"
