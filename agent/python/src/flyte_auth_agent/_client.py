"""Token access: the token files the agent writes, and its token API on a unix socket."""

from __future__ import annotations

import http.client
import json
import os
import socket
import unicodedata
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import quote

#: Where the agent's unix socket is when ``FLYTE_AUTH_AGENT_SOCKET`` is not set.
DEFAULT_SOCKET = "/var/run/flyte-auth-agent/agent.sock"

#: Seconds to wait for the agent to connect and answer.
TIMEOUT = 30.0

_ENV_SOCKET = "FLYTE_AUTH_AGENT_SOCKET"
_ENV_TOKENS_PATH_PREFIX = "FLYTE_TOKENS_PATH_PREFIX"


class TokenError(Exception):
    """No token could be had: the agent is unreachable, or it answered with an error.

    The message names the token and the reason; it never contains a token value.

    Attributes:
        name: the token asked for; ``None`` for the Admin token (:func:`admin_token`).
        status: the agent's HTTP status, or ``None`` when it did not answer.
        reason: why, in words (the agent's ``message`` when it answered).
    """

    def __init__(self, name: Optional[str], reason: str, status: Optional[int] = None) -> None:
        self.name = name
        self.status = status
        self.reason = reason
        super().__init__(f"{'admin token' if name is None else f'token {name!r}'}: {reason}")


def socket_path() -> str:
    """The agent's socket: ``$FLYTE_AUTH_AGENT_SOCKET``, else :data:`DEFAULT_SOCKET`."""
    return os.environ.get(_ENV_SOCKET) or DEFAULT_SOCKET


def check_name(name: str) -> None:
    """Raises ValueError unless ``name`` is a safe single path component (the agent's own rules)."""
    if not isinstance(name, str):
        raise ValueError(f"token name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("token name is empty")
    if name in (".", ".."):
        raise ValueError(f"token name {name!r} is not a file name")
    if "/" in name:
        raise ValueError(f"token name {name!r} contains '/'; it must be a single path component")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ValueError(f"token name {name!r} contains a control character")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise ValueError("token name is longer than 255 bytes")
    if name.startswith("."):
        raise ValueError(f"token name {name!r} starts with '.'; token files are never hidden files")


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        # The host only fills the Host header.
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _get(path: str, name: Optional[str]) -> Tuple[int, bytes]:
    """One ``GET path`` (``Accept: text/plain``) on the agent's socket: status and body."""
    sock = socket_path()
    timeout = TIMEOUT
    conn = _UnixHTTPConnection(sock, timeout)
    try:
        conn.request("GET", path, headers={"Accept": "text/plain"})
        response = conn.getresponse()
        return response.status, response.read()
    except socket.timeout:
        raise TokenError(name, f"the flyte-auth-agent at {sock} did not answer within {timeout:g} s") from None
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise TokenError(
            name,
            f"cannot reach the flyte-auth-agent at {sock}: {reason} "
            f"(is the agent running in this pod? its socket is ${_ENV_SOCKET})",
        ) from None
    except http.client.HTTPException as e:
        raise TokenError(name, f"bad answer from the flyte-auth-agent at {sock}: {type(e).__name__}") from None
    finally:
        conn.close()


def _from_agent(path: str, name: Optional[str]) -> str:
    """The bare token the agent serves at ``path``, or TokenError with its reason."""
    status, body = _get(path, name)
    if status == 200:
        try:
            value = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise TokenError(name, "the agent's answer is not UTF-8", status) from None
        if not value:
            raise TokenError(name, "the agent answered with an empty token", status)
        return value
    message = None
    try:
        answer = json.loads(body)
        if isinstance(answer, dict):
            message = answer.get("message") or answer.get("error")
    except ValueError:
        pass
    if not isinstance(message, str) or not message:
        message = body.decode("utf-8", "replace").strip()[:500] or http.client.responses.get(status, "")
    raise TokenError(name, f"the flyte-auth-agent answered {status}: {message}", status)


def _from_file(name: str) -> Tuple[Optional[str], Optional[str]]:
    """The token in ``$FLYTE_TOKENS_PATH_PREFIX/<name>``: (value, None), or (None, why not)."""
    prefix = os.environ.get(_ENV_TOKENS_PATH_PREFIX)
    if not prefix:
        return None, None
    path = Path(prefix) / name
    try:
        value = path.read_bytes().decode("utf-8").strip()
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path}: {getattr(e, 'strerror', None) or type(e).__name__}"
    if not value:
        return None, f"{path} is empty"
    return value, None


def token(name: str) -> str:
    """The current access token ``name`` that the pod's flyte-auth-agent keeps fresh.

    Reads the file ``$FLYTE_TOKENS_PATH_PREFIX/<name>``, which the agent replaces atomically on
    every refresh. When that variable is unset or the file is missing or empty, asks the agent
    itself over its unix socket (``$FLYTE_AUTH_AGENT_SOCKET``, default
    ``/var/run/flyte-auth-agent/agent.sock``), which waits for a fresh token if need be.

    Call it each time a token is needed rather than keeping the value: tokens expire.

    Args:
        name: the token request's name, as given in the task's token requests.

    Returns:
        The bare access token.

    Raises:
        ValueError: ``name`` is not a safe single path component.
        TokenError: neither the file nor the agent had the token; the message says why.
    """
    check_name(name)
    value, file_problem = _from_file(name)
    if value is not None:
        return value
    try:
        return _from_agent("/v1/tokens/" + quote(name, safe=""), name)
    except TokenError as e:
        if file_problem:
            raise TokenError(name, f"{e.reason} (and {file_problem})", e.status) from None
        raise


def admin_token() -> str:
    """The pod's FlyteAdmin token, bound to the task's executor, from the agent's socket.

    The agent already attaches it to every FlyteAdmin call made through its socket (see
    :func:`flyte_auth_agent.remote.default`); this is for code that needs the bearer token itself.

    Raises:
        TokenError: the agent is unreachable or has no Admin credential; the message says why.
    """
    return _from_agent("/v1/admin/token", None)
