"""Declare a task's token requests with flytekit's own ``OAuth2TokenRequest`` objects.

:func:`with_tokens` is a decorator stacked above ``@task``. It checks the requests when the module
is imported (so at ``pyflyte register``/``package`` time, never first in the pod), then:

- records them in the task's ``SecurityContext.tokens`` (what FlyteAdmin shows);
- merges into the task's pod template (a copy; a template shared by several tasks is not
  changed) the injector's opt-in label ``flyte.org/auth-agent: enabled``, the annotation
  ``flyte.org/auth-agent-flytekit-auth: flyte_auth_agent`` (the image has this package, so the
  injector may give flytekit this package's auth mode; a value the task sets itself stays), and
  the requests in the form the injector reads: ``flyte.tokens/t<i>``, flytepropeller's own encoding (protobuf text
  format of ``flyteidl.core.OAuth2TokenRequest`` in base32 with the alphabet
  ``abcdefghijklmnopqrstuvwxyz123456``, no padding) for requests without extensions, and the
  JSON annotation ``flyte.org/token-requests`` for requests with the agent's extensions (scopes,
  audience, client auth method), which have no proto field.

A decorator rather than a function returning ``@task`` keyword arguments: ``@task`` has no
``tokens=`` or ``security_ctx=`` argument (it builds the ``SecurityContext`` from
``secret_requests`` alone), so only something that sees the built task can record the tokens, and a
decorator also keeps the task's own ``pod_template=`` in the user's hands instead of making them
merge two of them.

Importing this module does not import flytekit; :func:`with_tokens` does when it is applied.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

# A task using this decorator imports this package, so its image has it: the pod may ask for
# the package's flytekit auth mode.
from ._contract import FLYTEKIT_AUTH_ANNOTATION, FLYTEKIT_AUTH_MODE

#: The injector's default opt-in label and value.
OPT_IN_LABEL = "flyte.org/auth-agent"
OPT_IN_VALUE = "enabled"
#: The prefix of flytepropeller-style token annotations: ``flyte.tokens/t0``, ``t1``, ...
TOKEN_ANNOTATION_PREFIX = "flyte.tokens/"
#: The JSON annotation for requests with the agent's extensions.
JSON_ANNOTATION = "flyte.org/token-requests"
#: The client auth methods the agent knows (the extension ``clientAuthMethod``).
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
#: The agent's default env prefix for secrets; a custom ``env_var`` must start with it.
SECRETS_ENV_PREFIX = "_FSEC_"

_STD_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PROPELLER_B32 = "abcdefghijklmnopqrstuvwxyz123456"
_TO_PROPELLER = str.maketrans(_STD_B32, _PROPELLER_B32)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class TokenRequestError(ValueError):
    """A token request that the injector or the agent would refuse; the message names it."""


@dataclasses.dataclass(frozen=True)
class Extended:
    """A flytekit ``OAuth2TokenRequest`` with the agent's extensions (see :func:`extend`)."""

    request: Any
    scopes: Tuple[str, ...] = ()
    audience: Optional[str] = None
    client_auth_method: Optional[str] = None


def extend(
    request: Any,
    *,
    scopes: Union[Sequence[str], str, None] = None,
    audience: Optional[str] = None,
    client_auth_method: Optional[str] = None,
) -> Extended:
    """``request`` with the agent's extensions: the ``scopes`` and ``audience`` to ask the IdP for,
    and how the agent authenticates the client (``client_secret_basic``, the default,
    ``client_secret_post`` or ``private_key_jwt``)."""
    if isinstance(scopes, str):
        scopes = scopes.split()
    return Extended(request, tuple(scopes or ()), audience, client_auth_method)


def encode_annotation(text: str) -> str:
    """``text`` in flytepropeller's base32 (a-z, 1-6, no padding)."""
    encoded = base64.b32encode(text.encode("utf-8")).decode("ascii").rstrip("=")
    return encoded.translate(_TO_PROPELLER)


def with_tokens(*requests: Any) -> Callable[[Any], Any]:
    """A decorator, stacked above ``@task``, giving the task's pod these token requests (flytekit
    ``OAuth2TokenRequest`` objects, or :func:`extend` of one). Raises :class:`TokenRequestError`
    naming the token for a request the injector or agent would refuse, and ``TypeError`` when not
    applied to a flytekit container task."""
    checked = _check_all(requests)

    def decorate(task: Any) -> Any:
        _apply(task, checked)
        return task

    return decorate


@dataclasses.dataclass
class _Checked:
    request: Any
    extensions: Dict[str, Any]


def _label(request: Any, index: int) -> str:
    name = getattr(request, "name", None)
    return f"token request {name!r}" if isinstance(name, str) and name else f"token request #{index}"


def _check_all(requests: Sequence[Any]) -> List[_Checked]:
    from flytekit.models.security import OAuth2TokenRequest

    if not requests:
        raise TokenRequestError("with_tokens() needs at least one OAuth2TokenRequest")
    out: List[_Checked] = []
    seen: Dict[str, int] = {}
    for i, item in enumerate(requests):
        ext = item if isinstance(item, Extended) else None
        request = ext.request if ext else item
        if not isinstance(request, OAuth2TokenRequest):
            raise TokenRequestError(
                f"argument #{i} of with_tokens() is a {type(request).__name__}, not a "
                "flytekit.models.security.OAuth2TokenRequest (or flyte_auth_agent.extend of one)"
            )
        what = _label(request, i)
        problems = _problems(request) + (_extension_problems(ext) if ext else [])
        if isinstance(request.name, str) and request.name in seen:
            problems.append(f"name {request.name!r} is already used by argument #{seen[request.name]}")
        if problems:
            raise TokenRequestError(f"{what}: " + "; ".join(problems))
        seen[request.name] = i
        extensions: Dict[str, Any] = {}
        if ext and ext.scopes:
            extensions["scopes"] = list(ext.scopes)
        if ext and ext.audience is not None:
            extensions["audience"] = ext.audience
        if ext and ext.client_auth_method is not None:
            extensions["clientAuthMethod"] = ext.client_auth_method
        out.append(_Checked(request, extensions))
    return out


def _name_problem(name: Any) -> Optional[str]:
    # The agent's rules: the name becomes a file name and a URL path segment.
    if not isinstance(name, str) or not name:
        return "name is empty"
    if name in (".", ".."):
        return f"name {name!r} is not a file name"
    if "/" in name:
        return f"name {name!r} contains '/'; it must be a single path component"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        return f"name {name!r} contains a control character"
    if len(name.encode("utf-8")) > 255:
        return "name is over 255 bytes, the most a file name holds"
    if name.startswith("."):
        return f"name {name!r} starts with '.'; token files must not be hidden files"
    return None


def _url_problem(field: str, url: str) -> Optional[str]:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        return f"{field} {url!r} is not a URL: {e}"
    if parts.scheme not in ("https", "http") or not host:
        return f"{field} {url!r} is not an https:// (or http://) URL"
    # Plain http off loopback is the injector's call (agent.allow_insecure_http), not this one's.
    return None


def _problems(request: Any) -> List[str]:
    from flytekit.models.security import OAuth2TokenRequest

    problems: List[str] = []
    name_problem = _name_problem(request.name)
    if name_problem:
        problems.append(name_problem)
    type_ = request.type_
    if type_ not in (OAuth2TokenRequest.Type.CLIENT_CREDENTIALS, OAuth2TokenRequest.Type.CLIENT_CREDENTIALS.value):
        problems.append(f"unknown type {type_!r}; only CLIENT_CREDENTIALS is supported")
    token, discovery = request.token_endpoint, request.idp_discovery_endpoint
    if not token and not discovery:
        problems.append("neither token_endpoint nor idp_discovery_endpoint is set")
    for field, url in (("token_endpoint", token), ("idp_discovery_endpoint", discovery)):
        if url:
            problem = _url_problem(field, url)
            if problem:
                problems.append(problem)
    client = request.client
    if client is None:
        problems.append("client is missing (an OAuth2Client with client_id and client_secret)")
        return problems
    if not (client.client_id or "").strip():
        problems.append("client.client_id is missing")
    secret = client.client_secret
    if secret is None:
        problems.append("client.client_secret is missing (a flytekit Secret with group and key)")
        return problems
    if not hasattr(secret, "group") or not hasattr(secret, "key"):
        problems.append(
            f"client.client_secret is a {type(secret).__name__}, not a flytekit Secret(group=..., key=...) "
            "naming the Kubernetes Secret the agent reads (the secret's value never belongs in the task)"
        )
        return problems
    if not secret.group:
        problems.append("client.client_secret has no group (the Kubernetes Secret's name)")
    elif len(secret.group) > 253 or not _DNS_SUBDOMAIN.match(secret.group):
        problems.append(
            f"client.client_secret.group {secret.group!r} is not a Kubernetes Secret name "
            "(lowercase letters, digits, '-' and '.', at most 253)"
        )
    if not secret.key:
        problems.append("client.client_secret has no key (the data key in the Kubernetes Secret)")
    elif len(secret.key) > 253 or not _SECRET_KEY.match(secret.key) or secret.key.startswith(".."):
        problems.append(
            f"client.client_secret.key {secret.key!r} is not a Secret data key "
            "(letters, digits, '-', '_' and '.', at most 253, not starting with '..')"
        )
    env_var = getattr(secret, "env_var", None)
    if env_var and (not env_var.startswith(SECRETS_ENV_PREFIX) or env_var == SECRETS_ENV_PREFIX):
        problems.append(
            f"client.client_secret.env_var {env_var!r} must start with {SECRETS_ENV_PREFIX!r}: the "
            "agent's other env vars are its configuration"
        )
    return problems


def _extension_problems(ext: Extended) -> List[str]:
    problems = []
    for scope in ext.scopes:
        if not isinstance(scope, str) or not scope or " " in scope:
            problems.append(f"scope {scope!r} is not a single scope string")
    if ext.audience is not None and (not isinstance(ext.audience, str) or not ext.audience):
        problems.append(f"audience {ext.audience!r} is not a non-empty string")
    if ext.client_auth_method is not None and ext.client_auth_method not in CLIENT_AUTH_METHODS:
        problems.append(
            f"client_auth_method {ext.client_auth_method!r} is not one of {', '.join(CLIENT_AUTH_METHODS)}"
        )
    return problems


def _to_idl(request: Any) -> Any:
    """The flyteidl message of a checked ``request``. flytekit 1.16's ``OAuth2Client.to_flyte_idl``
    passes its ``client_secret`` model where the proto wants a ``Secret`` message, and so raises
    ``TypeError`` for every client: build the message here."""
    from flyteidl.core import security_pb2

    secret = request.client.client_secret
    if not isinstance(secret, security_pb2.Secret):
        secret = secret.to_flyte_idl()
    return security_pb2.OAuth2TokenRequest(
        name=request.name,
        type=getattr(request.type_, "value", request.type_),
        token_endpoint=request.token_endpoint or "",
        idp_discovery_endpoint=request.idp_discovery_endpoint or "",
        client=security_pb2.OAuth2Client(client_id=request.client.client_id, client_secret=secret),
    )


def _recorded_class() -> Any:
    from flytekit.models.security import OAuth2TokenRequest

    class Recorded(OAuth2TokenRequest):
        """flytekit's ``OAuth2TokenRequest`` whose ``to_flyte_idl`` works (see :func:`_to_idl`), so
        flytekit's own serialization of ``SecurityContext.tokens`` does not raise."""

        def to_flyte_idl(self) -> Any:
            return _to_idl(self)

    return Recorded


class _Recorded:
    _cls: Any = None

    @classmethod
    def of(cls, request: Any) -> Any:
        if cls._cls is None:
            cls._cls = _recorded_class()
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
        return cls._cls(**fields)


def _merge(
    task: Any, where: str, labels: Optional[Dict[str, str]], annotations: Optional[Dict[str, str]], ours: Dict[str, str]
) -> Tuple[Dict[str, str], Dict[str, str]]:
    """``labels`` and ``annotations`` (of ``where``) with the opt-in label and ``ours`` added;
    refuses a different opt-in value and token requests already declared there."""
    labels = dict(labels or {})
    annotations = dict(annotations or {})
    if labels.get(OPT_IN_LABEL, OPT_IN_VALUE) != OPT_IN_VALUE:
        raise TokenRequestError(
            f"task {task.name}: its {where} sets label {OPT_IN_LABEL}={labels[OPT_IN_LABEL]!r}, "
            f"but its token requests need {OPT_IN_VALUE!r}"
        )
    existing = sorted(k for k in annotations if k.startswith(TOKEN_ANNOTATION_PREFIX) or k == JSON_ANNOTATION)
    if existing:
        raise TokenRequestError(
            f"task {task.name}: its {where} already declares token requests ({', '.join(existing)}); "
            "list every request in one with_tokens(...) instead"
        )
    labels[OPT_IN_LABEL] = OPT_IN_VALUE
    annotations.update(ours)
    # The user's own choice (e.g. external_process) stands.
    annotations.setdefault(FLYTEKIT_AUTH_ANNOTATION, FLYTEKIT_AUTH_MODE)
    return labels, annotations


def _apply(task: Any, checked: List[_Checked]) -> None:
    # Registers the auth mode the annotation asks for, also where the package is vendored
    # without its entry points: the task module, which uses this decorator, is imported before
    # the task builds a FlyteRemote.
    from . import flytekit_auth  # noqa: F401
    from flytekit.core.python_auto_container import PythonAutoContainerTask
    from flytekit.models.security import SecurityContext
    from google.protobuf import json_format, text_format

    if not isinstance(task, PythonAutoContainerTask):
        raise TypeError(
            f"with_tokens() decorates a flytekit task, but got {type(task).__name__}: put "
            "@with_tokens(...) above @task, not below it"
        )
    ctx = task.security_context
    if ctx is not None and ctx.tokens:
        names = ", ".join(repr(t.name) for t in ctx.tokens)
        raise TokenRequestError(f"task {task.name}: its SecurityContext already has tokens ({names})")
    ours: Dict[str, str] = {}
    extended = []
    for c in checked:
        idl = _to_idl(c.request)
        if c.extensions:
            extended.append({**json_format.MessageToDict(idl), **c.extensions})
        else:
            key = f"{TOKEN_ANNOTATION_PREFIX}t{len(ours)}"
            ours[key] = encode_annotation(text_format.MessageToString(idl))
    if extended:
        ours[JSON_ANNOTATION] = json.dumps(extended, separators=(",", ":"))
    # The task's own labels and annotations (`@task(labels=..., annotations=...)`, flyteidl
    # TaskMetadata.metadata), which propeller puts on the pod over the pod template's: they need
    # no `kubernetes` package, which a flytekit PodTemplate does.
    meta = task.metadata
    labels, annotations = _merge(task, "@task(labels/annotations)", meta.labels, meta.annotations, ours)
    template = task.pod_template
    if template is not None:
        # Also the pod template's, for a propeller that predates TaskMetadata.metadata; a copy,
        # since the same PodTemplate object may serve tasks without these tokens.
        t_labels, t_annotations = _merge(task, "pod template", template.labels, template.annotations, ours)
        task.pod_template = dataclasses.replace(template, labels=t_labels, annotations=t_annotations)
    # Checked everything before changing anything: a refused task is left as it was.
    task._metadata = dataclasses.replace(meta, labels=labels, annotations=annotations)
    tokens = [_Recorded.of(c.request) for c in checked]
    # @task has no security_ctx argument to pass this through; the base Task keeps it here and
    # flytekit's translator reads it back through the public `security_context` property.
    task._security_ctx = SecurityContext(tokens=tokens) if ctx is None else dataclasses.replace(ctx, tokens=tokens)
