"""A :class:`flytekit.remote.FlyteRemote` that reaches FlyteAdmin through the pod's agent."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Optional

from ._client import socket_path

if TYPE_CHECKING:  # flytekit is imported only when a remote is built: it is slow to import.
    from flytekit.configuration import Config
    from flytekit.remote import FlyteRemote


def _env(*names: str) -> Optional[str]:
    """The first of ``names`` set in the environment (as flytekit's entrypoint reads them)."""
    for name in names:
        if name in os.environ:
            return os.environ[name]
    return None


def default(
    project: Optional[str] = None,
    domain: Optional[str] = None,
    *,
    config: Optional["Config"] = None,
    **kwargs: Any,
) -> "FlyteRemote":
    """A FlyteRemote for the running task, authenticated by the pod's flyte-auth-agent.

    Its platform endpoint is the agent's socket, ``unix://$FLYTE_AUTH_AGENT_SOCKET`` (default
    ``unix:///var/run/flyte-auth-agent/agent.sock``), with ``insecure=True``: the agent proxies
    every gRPC call to FlyteAdmin and attaches the executor-bound credential, so the task holds no
    client secret. Everything else (data config for S3/GCS/Azure, secrets, stats, auth mode) comes
    from ``flytekit.configuration.Config.auto()``, i.e. the usual config file and ``FLYTE_*``
    environment variables.

    Nothing is contacted until the remote is first used, so this may be called at import time.

    Args:
        project: default project; else the running execution's
            (``FLYTE_INTERNAL_EXECUTION_PROJECT``, or flytekit's short ``_F_PRJ``), else none.
        domain: default domain; else the running execution's
            (``FLYTE_INTERNAL_EXECUTION_DOMAIN``, or ``_F_DM``), else none.
        config: the config to start from instead of ``Config.auto()``; its platform endpoint and
            ``insecure`` are still replaced.
        **kwargs: passed on to ``FlyteRemote`` (e.g. ``data_upload_location``).

    Returns:
        A ``flytekit.remote.FlyteRemote``.
    """
    from flytekit.configuration import Config
    from flytekit.remote import FlyteRemote

    base = config if config is not None else Config.auto()
    endpoint = "unix://" + os.path.abspath(socket_path())
    platform = dataclasses.replace(base.platform, endpoint=endpoint, insecure=True)
    if project is None:
        project = _env("FLYTE_INTERNAL_EXECUTION_PROJECT", "_F_PRJ")
    if domain is None:
        domain = _env("FLYTE_INTERNAL_EXECUTION_DOMAIN", "_F_DM")
    return FlyteRemote(
        base.with_params(platform=platform),
        default_project=project or None,
        default_domain=domain or None,
        **kwargs,
    )
