"""Ground truth from the real PyPI flyteidl/protobuf for the Rust proto crate's tests.

Modes:
  encode       print {case: {"message", "hex", "json", "json_snake"}} for fixed cases
  decode       read JSON lines {"message", "hex"} on stdin; print each as snake_case JSON
  descriptors  print every field of the security messages (name, number, type, json_name, label)
"""

import json
import sys

from flyteidl.core import security_pb2 as sec
from google.protobuf import json_format

MESSAGES = ["Secret", "OAuth2Client", "Identity", "OAuth2TokenRequest", "SecurityContext"]


def cases():
    secret = sec.Secret(group="warehouse-oauth", group_version="v2", key="client_secret",
                        mount_requirement=sec.Secret.MountType.FILE, env_var="WAREHOUSE_SECRET")
    request = sec.OAuth2TokenRequest(
        name="warehouse",
        type=sec.OAuth2TokenRequest.Type.CLIENT_CREDENTIALS,
        client=sec.OAuth2Client(client_id="warehouse-reader", client_secret=secret),
        idp_discovery_endpoint="https://idp.example.com/.well-known/openid-configuration",
        token_endpoint="https://idp.example.com/oauth2/token",
    )
    yield "token_request", request
    yield "token_request_minimal", sec.OAuth2TokenRequest(name="n")
    for mount in ("ANY", "ENV_VAR", "FILE"):
        yield f"secret_{mount.lower()}", sec.Secret(group="g", key="k", mount_requirement=getattr(sec.Secret.MountType, mount))
    yield "security_context", sec.SecurityContext(
        run_as=sec.Identity(iam_role="arn:aws:iam::1:role/r", k8s_service_account="sa",
                            oauth2_client=sec.OAuth2Client(client_id="c"), execution_identity="alice"),
        secrets=[sec.Secret(group="a"), sec.Secret(group="b", key="k")],
        tokens=[request, sec.OAuth2TokenRequest(name="second", token_endpoint="https://t")],
    )
    yield "unicode", sec.OAuth2TokenRequest(name="tök€n-ü", client=sec.OAuth2Client(client_id="客户"))
    yield "empty_context", sec.SecurityContext()


def encode():
    out = {}
    for name, msg in cases():
        out[name] = {
            "message": msg.DESCRIPTOR.full_name,
            "hex": msg.SerializeToString(deterministic=True).hex(),
            "json": json.loads(json_format.MessageToJson(msg)),
            "json_snake": json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True)),
        }
    print(json.dumps(out))


def decode():
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        cls = getattr(sec, item["message"].rsplit(".", 1)[1])
        msg = cls.FromString(bytes.fromhex(item["hex"]))
        print(json.dumps(json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))))


def descriptors():
    out = []
    for name in MESSAGES:
        d = getattr(sec, name).DESCRIPTOR
        for f in d.fields:
            out.append({"message": d.full_name, "name": f.name, "number": f.number, "type": f.type,
                        "json_name": f.json_name, "repeated": f.is_repeated})
    print(json.dumps(out))


if __name__ == "__main__":
    {"encode": encode, "decode": decode, "descriptors": descriptors}[sys.argv[1]]()
