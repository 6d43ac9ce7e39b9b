"""Ground truth from the real PyPI flyteidl/protobuf for the Rust proto crate's tests
(proto/tests/flyteidl_python.rs), run with the tests/.venv Python.

Modes:
  encode       print {case: {"message", "hex", "json", "json_snake", "text", "annotation"}} for
               fixed cases ("text": text_format; "annotation": that text as flytepropeller
               encodes annotation values)
  decode       read JSON lines {"message", "hex"} on stdin; print each as snake_case JSON
  parse        read JSON lines {"message", "json"} on stdin; print {"ok": snake_case JSON} or
               {"error": text} per line, as json_format.Parse (unknown fields rejected) sees it
  parse_text   read JSON lines {"message", "text"} on stdin; print {"hex"} of text_format.Parse,
               or {"error"}, per line
  admin_descriptor_set
               write (hex, on stdout) the FileDescriptorSet of every file Admin's services need:
               flyteidl/service/{admin,dataproxy,signal,identity,auth}.proto and everything they
               import, dependencies first, each file once (proto/descriptors/flyteidl-admin.binpb)
  descriptors  read a file name on stdin (flyteidl/core/security.proto when empty) and print
               that whole file as its descriptors have it: package, syntax, every message
               (nested ones too), field, enum value and service method
"""

import base64
import json
import sys

from flyteidl.core import security_pb2 as sec
from flyteidl.service import auth_pb2 as auth
from google.protobuf import descriptor_pb2, json_format, text_format


def cases():
    secret = sec.Secret(group="warehouse-oauth", group_version="v2", key="client_secret",
                        mount_requirement=sec.Secret.MountType.FILE, env_var="WAREHOUSE_SECRET")
    client = sec.OAuth2Client(client_id="warehouse-reader", client_secret=secret)
    request = sec.OAuth2TokenRequest(
        name="warehouse",
        type=sec.OAuth2TokenRequest.Type.CLIENT_CREDENTIALS,
        client=client,
        idp_discovery_endpoint="https://idp.example.com/.well-known/openid-configuration",
        token_endpoint="https://idp.example.com/oauth2/token",
    )
    yield "token_request", request
    yield "token_request_minimal", sec.OAuth2TokenRequest(name="n")
    yield "token_request_empty_client", sec.OAuth2TokenRequest(name="n", client=sec.OAuth2Client())
    for mount in ("ANY", "ENV_VAR", "FILE"):
        yield f"secret_{mount.lower()}", sec.Secret(
            group="g", key="k", mount_requirement=getattr(sec.Secret.MountType, mount))
    yield "secret_custom_env_var", sec.Secret(group="g", key="k", env_var="MY_VAR")
    yield "secret_empty", sec.Secret()
    yield "oauth2_client", client
    yield "identity", sec.Identity(iam_role="arn:aws:iam::1:role/r", k8s_service_account="sa",
                                   oauth2_client=sec.OAuth2Client(client_id="c"),
                                   execution_identity="alice")
    yield "security_context", sec.SecurityContext(
        run_as=sec.Identity(iam_role="arn:aws:iam::1:role/r", k8s_service_account="sa",
                            oauth2_client=sec.OAuth2Client(client_id="c"), execution_identity="alice"),
        secrets=[sec.Secret(group="a"), sec.Secret(group="b", key="k")],
        tokens=[request, sec.OAuth2TokenRequest(name="second", token_endpoint="https://t")],
    )
    yield "security_context_empty_entries", sec.SecurityContext(
        run_as=sec.Identity(), secrets=[sec.Secret()], tokens=[sec.OAuth2TokenRequest()])
    # proto3 enums are open: numbers no value names survive bytes and JSON.
    yield "unknown_enum_numbers", sec.OAuth2TokenRequest(
        name="n", type=7, client=sec.OAuth2Client(client_secret=sec.Secret(mount_requirement=9)))
    yield "unicode", sec.OAuth2TokenRequest(
        name="tök€n-ü 🔑", client=sec.OAuth2Client(client_id="客户", client_secret=sec.Secret(key="ключ")))
    yield "empty_context", sec.SecurityContext()


def propeller_annotation(text):
    """flytepropeller's annotation encoding: base32, alphabet a-z then 1-6, no padding."""
    standard = base64.b32encode(text.encode("utf-8")).decode("ascii").rstrip("=")
    return standard.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
                                            "abcdefghijklmnopqrstuvwxyz123456"))


def encode():
    out = {}
    for name, msg in cases():
        assert name not in out, f"case {name} twice"
        out[name] = {
            "message": msg.DESCRIPTOR.full_name,
            "hex": msg.SerializeToString(deterministic=True).hex(),
            "json": json.loads(json_format.MessageToJson(msg)),
            "json_snake": json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True)),
            "text": text_format.MessageToString(msg),
            "annotation": propeller_annotation(text_format.MessageToString(msg)),
        }
    print(json.dumps(out))


def parse_text():
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        try:
            msg = text_format.Parse(item["text"], message_class(item["message"])())
        except text_format.ParseError as e:
            print(json.dumps({"error": str(e)}))
            continue
        print(json.dumps({"hex": msg.SerializeToString(deterministic=True).hex()}))


def message_class(full_name):
    package, _, name = full_name.rpartition(".")
    if package != sec.DESCRIPTOR.package:
        raise SystemExit(f"not a {sec.DESCRIPTOR.package} message: {full_name}")
    return getattr(sec, name)


def decode():
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        msg = message_class(item["message"]).FromString(bytes.fromhex(item["hex"]))
        print(json.dumps(json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))))


def parse():
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        try:
            msg = json_format.ParseDict(item["json"], message_class(item["message"])())
        except json_format.ParseError as e:
            print(json.dumps({"error": str(e)}))
            continue
        print(json.dumps({"ok": json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))}))


def describe_enum(e):
    return {"name": e.full_name, "values": [{"name": v.name, "number": v.number} for v in e.values]}


def describe_message(d, messages, enums):
    fields = []
    for f in d.fields:
        target = f.message_type or f.enum_type
        fields.append({
            "name": f.name,
            "number": f.number,
            "type": f.type,  # FieldDescriptorProto.Type: 9 string, 11 message, 14 enum
            "type_name": target.full_name if target else None,
            "json_name": f.json_name,
            "repeated": f.is_repeated,
            "presence": f.has_presence,
            "oneof": f.containing_oneof.name if f.containing_oneof else None,
        })
    messages.append({"name": d.full_name, "fields": fields})
    enums.extend(describe_enum(e) for e in d.enum_types)
    for nested in d.nested_types:
        describe_message(nested, messages, enums)


def describe_service(s):
    return {
        "name": s.full_name,
        "methods": [
            {"name": m.name, "input": m.input_type.full_name, "output": m.output_type.full_name,
             "client_streaming": m.client_streaming, "server_streaming": m.server_streaming}
            for m in s.methods
        ],
    }


def descriptors():
    name = sys.stdin.read().strip() or sec.DESCRIPTOR.name
    files = {sec.DESCRIPTOR.name: sec.DESCRIPTOR, auth.DESCRIPTOR.name: auth.DESCRIPTOR}
    if name not in files:
        raise SystemExit(f"descriptors: unknown file {name!r}, known: {sorted(files)}")
    fd = files[name]
    messages, enums = [], []
    for d in fd.message_types_by_name.values():
        describe_message(d, messages, enums)
    enums.extend(describe_enum(e) for e in fd.enum_types_by_name.values())
    file = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(file)
    print(json.dumps({
        "file": fd.name,
        "package": fd.package,
        "syntax": file.syntax,
        "messages": sorted(messages, key=lambda m: m["name"]),
        "enums": sorted(enums, key=lambda e: e["name"]),
        "services": [describe_service(s) for s in fd.services_by_name.values()],
    }))


def admin_services():
    """Every service of the flyteidl.service files Admin's endpoint serves, with method names."""
    import importlib
    services = []
    for module in ("admin_pb2", "dataproxy_pb2", "signal_pb2", "identity_pb2", "auth_pb2"):
        fd = importlib.import_module(f"flyteidl.service.{module}").DESCRIPTOR
        services.extend([s.full_name, [m.name for m in s.methods]]
                        for s in fd.services_by_name.values())
    print(json.dumps(services))


def admin_descriptor_set():
    """The FileDescriptorSet of Admin's service files and their imports, dependencies first."""
    from descriptor_sets import descriptor_set

    modules = ("admin_pb2", "dataproxy_pb2", "signal_pb2", "identity_pb2", "auth_pb2")
    print(descriptor_set(f"flyteidl.service.{m}" for m in modules).hex())


if __name__ == "__main__":
    modes = {"encode": encode, "decode": decode, "parse": parse, "parse_text": parse_text,
             "descriptors": descriptors, "admin_services": admin_services,
             "admin_descriptor_set": admin_descriptor_set}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        raise SystemExit(f"usage: {sys.argv[0]} {'|'.join(modes)}")
    modes[sys.argv[1]]()
