"""flyte_auth_agent.with_tokens on real flytekit tasks, serialized by flytekit itself.

`pod`: prints, as JSON, what propeller takes from the TaskTemplate of a task declaring two token
requests (one plain, one with the agent's extensions): the container (image, args, env) and the
labels and annotations (TaskTemplate.metadata.metadata, which propeller puts on the pod), plus the
SecurityContext.tokens flytekit serialized (flyteidl JSON).

`template`: prints, as JSON, the pod template of a task that had one (shared with another task)
after decoration, that template as the other task still sees it, and the decorated task's own
annotations. Not serialized: a flytekit PodTemplate's serialization needs the `kubernetes`
package, which flytekit does not bring (and tests/.venv does not have).

`live ISSUER TOKEN_ENDPOINT`: `pod` for a task whose requests name that IdP.

`errors`: prints, as JSON, each refused declaration: case, exception type and message.

Run with PYTHONPATH=agent/python/src (the package under test) and tests/.venv's python.
"""

import json
import sys
from collections import OrderedDict

from flytekit import task
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.models.security import OAuth2Client, OAuth2TokenRequest, Secret
from flytekit.tools.translator import get_serializable
from google.protobuf import json_format

import flyte_auth_agent as faa

DISCOVERY = "https://idp.example.com/.well-known/openid-configuration"


def request(name, group="api-client", key="secret", **kw):
    kw.setdefault("idp_discovery_endpoint", DISCOVERY)
    return OAuth2TokenRequest(
        name=name,
        client=OAuth2Client(client_id=f"{name}-client", client_secret=Secret(group=group, key=key)),
        **kw,
    )


@faa.with_tokens(
    request("my-api"),
    faa.extend(
        request("reports", group="reports-client", token_endpoint="https://idp.example.com/oauth/token",
                idp_discovery_endpoint=None),
        scopes=["reports:read", "reports:write"],
        audience="https://reports.example.com",
        client_auth_method="client_secret_post",
    ),
)
@task(
    labels={"team": "data"},
    annotations={"owner": "alice"},
    environment={"APP_MODE": "prod"},
    secret_requests=[Secret(group="db", key="password")],
)
def call_apis() -> str:
    return faa.token("my-api")


def pod(entity=None) -> dict:
    settings = SerializationSettings(image_config=ImageConfig.auto_default_image())
    template = get_serializable(OrderedDict(), settings, entity or call_apis).template.to_flyte_idl()
    meta = template.metadata.metadata
    container = template.container
    return {
        "labels": dict(meta.labels),
        "annotations": dict(meta.annotations),
        "container": {
            "image": container.image,
            "args": list(container.args),
            "env": [{"name": kv.key, "value": kv.value} for kv in container.env],
        },
        "tokens": [json_format.MessageToDict(t) for t in template.security_context.tokens],
        "secrets": [json_format.MessageToDict(t) for t in template.security_context.secrets],
    }


def template() -> dict:
    from flytekit import PodTemplate

    # Any non-None pod_spec: without one, PodTemplate imports `kubernetes` to build an empty one.
    shared = PodTemplate(pod_spec={"containers": []}, labels={"team": "ml"}, annotations={"owner": "bob"})
    other = task(pod_template=shared)(plain)
    decorated = decorate(request("my-api"), pod_template=shared)
    return {
        "decorated": {"labels": decorated.pod_template.labels, "annotations": decorated.pod_template.annotations},
        "shared": {"labels": other.pod_template.labels, "annotations": other.pod_template.annotations},
        "task_annotations": decorated.metadata.annotations,
        "same_pod_spec": decorated.pod_template.pod_spec is shared.pod_spec,
    }


def refused(case, make):
    try:
        make()
    except Exception as e:  # noqa: BLE001 - the type is part of what is reported
        return {"case": case, "type": type(e).__name__, "message": str(e)}
    return {"case": case, "type": None, "message": "accepted"}


def plain() -> None:
    return None


def decorate(*requests, **task_kwargs):
    # A module-level function: flytekit refuses tasks of nested functions outside test_ modules.
    return faa.with_tokens(*requests)(task(**task_kwargs)(plain))


def live(issuer: str, token_endpoint: str) -> dict:
    """A task whose requests point at a live IdP: `reader` (propeller's encoding; FILE secret) and
    `writer` (JSON, client_secret_post; ENV_VAR secret with a mixed-case key)."""
    reader = OAuth2TokenRequest(
        name="reader",
        client=OAuth2Client(
            client_id="reader",
            client_secret=Secret(group="reader-oauth", key="client_secret", mount_requirement=Secret.MountType.FILE),
        ),
        idp_discovery_endpoint=issuer,
    )
    writer = OAuth2TokenRequest(
        name="writer",
        client=OAuth2Client(
            client_id="writer",
            client_secret=Secret(group="writer-oauth", key="Secret_Value", mount_requirement=Secret.MountType.ENV_VAR),
        ),
        token_endpoint=token_endpoint,
    )
    return pod(decorate(reader, faa.extend(writer, client_auth_method="client_secret_post")))


def errors() -> list:
    unknown = request("odd")
    unknown.type_ = 7
    cases = [
        ("duplicate", lambda: decorate(request("a"), request("a"))),
        # flytekit's Secret itself refuses group=None at registration, without naming the token.
        ("no-group", lambda: decorate(request("nogroup", group=""))),
        ("unknown-type", lambda: decorate(unknown)),
        ("bad-name", lambda: decorate(request("../etc"))),
        ("hidden-name", lambda: decorate(request(".hidden"))),
        ("no-endpoint", lambda: decorate(request("noidp", idp_discovery_endpoint=None))),
        ("not-a-url", lambda: decorate(request("ftp", idp_discovery_endpoint="ftp://idp.example.com/"))),
        ("bad-auth-method", lambda: decorate(faa.extend(request("m"), client_auth_method="basic"))),
        ("bad-scope", lambda: decorate(faa.extend(request("s"), scopes=["a b"]))),
        ("string-secret", lambda: decorate(OAuth2TokenRequest(
            name="str", client=OAuth2Client(client_id="c", client_secret="hunter2"),
            idp_discovery_endpoint=DISCOVERY))),
        ("not-a-request", lambda: decorate({"name": "dict"})),
        ("below-task", lambda: faa.with_tokens(request("under"))(lambda: None)),
        ("opt-out-label", lambda: decorate(request("x"), labels={"flyte.org/auth-agent": "disabled"})),
        ("hand-written", lambda: decorate(request("y"), annotations={"flyte.org/token-requests": "[]"})),
    ]
    return [refused(case, make) for case, make in cases]


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "pod":
        print(json.dumps(pod()))
    elif mode == "live" and len(sys.argv) == 4:
        print(json.dumps(live(sys.argv[2], sys.argv[3])))
    elif mode == "template":
        print(json.dumps(template()))
    elif mode == "errors":
        print(json.dumps(errors()))
    else:
        sys.exit("usage: fk_tokens_task.py pod|template|errors|live ISSUER TOKEN_ENDPOINT")
