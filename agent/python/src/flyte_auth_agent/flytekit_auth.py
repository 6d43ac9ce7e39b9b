"""flytekit's auth mode for task pods with the agent: ``FLYTE_CREDENTIALS_AUTH_MODE=flyte_auth_agent``.

Through the agent a task needs no credential of its own: the agent attaches the executor-bound
one to every call it forwards. flytekit's built-in modes still do work before the first call:
``standard`` (PKCE) loads a keyring backend and would open a browser; ``external_process`` asks
FlyteAdmin's ``AuthMetadataService`` twice (through the agent) before it sends anything. This
authenticator does neither: it holds no credential, sends none, and asks nothing. flytekit calls
``refresh_credentials`` only after Admin answered UNAUTHENTICATED or UNKNOWN, which no login in the
pod could fix, so it raises an error that says where to look.

flytekit finds it by name in its authenticator registry. The package registers it there when
flytekit loads its implicit plugins (this module is the package's ``flytekit.plugins`` entry
point, and ``import flytekit`` has imported ``flytekit.clients.auth_helper`` by then), and
also under the ``flytekit.auth`` entry-point group, which flytekit searches when a name is not
registered. The injector sets this mode only for pods whose image has the package (see the
injector's ``admin.task_auth``).
"""

from __future__ import annotations

from typing import Any

from flytekit.clients.auth.authenticator import Authenticator
from flytekit.clients.auth.exceptions import AuthenticationError
from flytekit.clients.auth_helper import register_authenticator_plugin

# The auth mode's name, the value of ``FLYTE_CREDENTIALS_AUTH_MODE``.
from ._contract import FLYTEKIT_AUTH_MODE as AUTH_MODE

#: Why a task pod cannot log in, raised instead.
REFUSED = (
    "flyte-auth-agent: FlyteAdmin answered UNAUTHENTICATED or UNKNOWN through the auth agent; a task "
    "pod does not log in itself (the agent authenticates its calls). See the log of the auth agent "
    "container."
)


class AgentAuthenticator(Authenticator):
    """Sends no credential (the agent attaches one) and never logs in."""

    def __init__(self, cfg: Any = None, cfg_store: Any = None):
        # The client config store is not asked: the header key matters only to a credential
        # this authenticator never has.
        super().__init__(getattr(cfg, "endpoint", None), header_key=None)

    def refresh_credentials(self) -> None:
        """Refuses: the task's call reached Admin without a usable credential from the agent."""
        raise AuthenticationError(REFUSED)


register_authenticator_plugin(AUTH_MODE, AgentAuthenticator)
