"""flyte_auth_agent.with_tokens on real flytekit tasks, serialized by flytekit itself.

`pod`: prints, as JSON, what propeller takes from the TaskTemplate of a task declaring two token
requests (one plain, one with the agent's extensions): the task's name, the container (image, args, env) and the
labels and annotations (TaskTemplate.metadata.metadata, which propeller puts on the pod), plus the
SecurityContext.tokens flytekit serialized (flyteidl JSON). `k8s_pod` and `config` are null and
empty: this task has no pod template.

`template`: prints, as JSON, the pod template of a task that had one (shared with another task)
after decoration, that template as the other task still sees it, and the decorated task's own
annotations. Not serialized here (`live` serializes a pod template).

`live ISSUER TOKEN_ENDPOINT`: `pod` for a task whose requests name that IdP and which has a
flytekit `PodTemplate` with a `kubernetes.client.V1PodSpec` (its primary container `primary` with
an env var and a memory request and limit of its own, a nodeSelector, a toleration, labels and
annotations). flytekit then serializes no `container` but `k8s_pod` (its metadata and the pod
spec, into whose primary container flytekit merged the task's image, args and env) and
`config["primary_container_name"]`, which is what propeller builds the pod from. Needs the PyPI
`kubernetes` package (flytekit does not bring it; tests/requirements.txt does).

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
    container = None
    if template.HasField("container"):
        container = {
            "image": template.container.image,
            "args": list(template.container.args),
            "env": [{"name": kv.key, "value": kv.value} for kv in template.container.env],
        }
    k8s_pod = None
    if template.HasField("k8s_pod"):
        k8s_pod = {
            "metadata": {
                "labels": dict(template.k8s_pod.metadata.labels),
                "annotations": dict(template.k8s_pod.metadata.annotations),
            },
            "pod_spec": json_format.MessageToDict(template.k8s_pod.pod_spec),
        }
    return {
        "name": template.id.name,
        "labels": dict(meta.labels),
        "annotations": dict(meta.annotations),
        "container": container,
        "k8s_pod": k8s_pod,
        "config": dict(template.config),
        "tokens": [json_format.MessageToDict(t) for t in template.security_context.tokens],
        "secrets": [json_format.MessageToDict(t) for t in template.security_context.secrets],
    }


def template() -> dict:
    from flytekit import PodTemplate

    # A plain dict is enough for what this mode looks at (the template's labels and annotations,
    # and that its pod_spec object is shared, not copied); `live` uses a real V1PodSpec.
    shared = PodTemplate(pod_spec={"containers": []}, labels={"team": "ml"}, annotations={"owner": "bob"})
    other = task(pod_template=shared)(plain)
    decorated = decorate(request("my-api"), pod_template=shared)
    return {
        "decorated": {"labels": decorated.pod_template.labels, "annotations": decorated.pod_template.annotations},
        "shared": {"labels": other.pod_template.labels, "annotations": other.pod_template.annotations},
        "task_annotations": decorated.metadata.annotations,
        "same_pod_spec": decorated.pod_template.pod_spec is shared.pod_spec,
        # A task that picks flytekit's auth mode itself keeps its choice.
        "own_auth": decorate(
            request("own"), annotations={faa.tokens.FLYTEKIT_AUTH_ANNOTATION: "external_process"}
        ).metadata.annotations,
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
    task_kwargs = dict(
        pod_template=live_pod_template(),
        labels={"tier": "gold"},
        annotations={"reviewer": "carol"},
        environment={"APP_MODE": "prod"},
    )
    return pod(decorate(reader, faa.extend(writer, client_auth_method="client_secret_post"), **task_kwargs))


def live_pod_template():
    """A pod template as a user writes one: a primary container with settings of its own (which
    flytekit keeps when it merges the task's container in), scheduling, labels and annotations."""
    from flytekit import PodTemplate
    from kubernetes.client import V1Container, V1EnvVar, V1PodSpec, V1ResourceRequirements, V1Toleration

    return PodTemplate(
        primary_container_name="primary",
        pod_spec=V1PodSpec(
            containers=[
                V1Container(
                    name="primary",
                    env=[V1EnvVar(name="TEMPLATE_MODE", value="batch")],
                    resources=V1ResourceRequirements(requests={"memory": "500Mi"}, limits={"memory": "600Mi"}),
                )
            ],
            node_selector={"pool": "batch"},
            tolerations=[V1Toleration(key="dedicated", operator="Equal", value="batch", effect="NoSchedule")],
        ),
        labels={"team": "data"},
        annotations={"owner": "alice"},
    )


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
