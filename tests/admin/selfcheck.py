"""Checks the FlyteAdmin stand-in against the real test IdP, by hand (not part of CI):

    npm ci --prefix tests/idp   # once, if tests/idp/node_modules is missing
    tests/.venv/bin/python tests/admin/selfcheck.py

Starts tests/idp/server.mjs and tests/admin/standin.py, drives the stand-in with a gRPC client
(flyteidl's generated stubs) and its control protocol, prints one line per check and exits 1 on
the first failure.
"""

import base64
import datetime
import http.server
import ipaddress
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from flyteidl.admin import agent_pb2, common_pb2, execution_pb2, project_pb2, version_pb2
from flyteidl.core import execution_pb2 as core_execution_pb2
from flyteidl.core import identifier_pb2, literals_pb2
from flyteidl.service import admin_pb2_grpc, agent_pb2_grpc, auth_pb2, auth_pb2_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = sys.executable
WP = core_execution_pb2.WorkflowExecution.Phase
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ok(name):
    print(f"ok   {name}", flush=True)


def expect(cond, name, detail=""):
    if not cond:
        print(f"FAIL {name} {detail}", flush=True)
        sys.exit(1)
    ok(name)


class Proc:
    """A child that prints one JSON line when ready and is driven over stdin/stdout."""

    def __init__(self, argv, env_name, config):
        env = dict(os.environ, **{env_name: json.dumps(config)})
        self.p = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self.p.stdout.readline())

    def cmd(self, obj):
        self.p.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
        return self.p.wait(10)


class Idp:
    def __init__(self):
        self.proc = Proc(["node", "tests/idp/server.mjs"], "IDP_CONFIG", {})
        self.issuer = self.proc.ready["issuer"]

    def post(self, path, form=None, body=None, basic=("agent", "agent-secret")):
        headers = {}
        if basic:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{basic[0]}:{basic[1]}".encode()).decode()
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.issuer + path, data=data, headers=headers)
        with NO_PROXY.open(req, timeout=10) as r:
            return json.loads(r.read())

    def token(self, **form):
        # Without `scope` the IdP's token carries none; "all" is what FlyteAdmin requires.
        form = {"grant_type": "client_credentials", "scope": "all offline", **form}
        return self.post("/token", form=form)["access_token"]


def stand_in(issuer, **extra):
    return Proc([PY, os.path.join(HERE, "standin.py")], "ADMIN_CONFIG", {"issuer": issuer, **extra})


def bearer(token, header="flyte-authorization"):
    return ((header, f"Bearer {token}"),)


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, None


def raw_h2_frames(port, path):
    """Sends one gRPC request (empty message, no auth) over a hand-rolled HTTP/2 connection and
    returns the (type, flags) of the frames on stream 1, to tell a trailers-only answer (one
    HEADERS frame with END_STREAM) from headers + trailers."""
    def frame(ftype, flags, stream, payload):
        return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(
            ">I", stream) + payload

    def literal(name, value):  # HPACK literal without indexing, new name, no Huffman
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    hdrs = b"".join(literal(n, v) for n, v in [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
        (b":authority", f"127.0.0.1:{port}".encode()), (b"content-type", b"application/grpc"),
        (b"te", b"trailers")])
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
              + frame(1, 4, 1, hdrs) + frame(0, 1, 1, b"\x00\x00\x00\x00\x00"))
    buf, frames = b"", []
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            buf = buf[9 + n:]
            if ftype == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0, b""))  # SETTINGS ack
            if stream == 1:
                frames.append((ftype, flags))
                if flags & 1 and ftype in (0, 1):  # END_STREAM
                    s.close()
                    return frames
        chunk = s.recv(65536)
        if not chunk:
            s.close()
            return frames
        buf += chunk


def self_signed(tmp):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def main():
    idp = Idp()
    admin = stand_in(idp.issuer)
    port = admin.ready["port"]
    expect(isinstance(port, int) and port > 0, "address line", admin.ready)
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    adm = admin_pb2_grpc.AdminServiceStub(ch)
    meta = auth_pb2_grpc.AuthMetadataServiceStub(ch)
    logs = agent_pb2_grpc.AsyncAgentServiceStub(ch)
    sync = agent_pb2_grpc.SyncAgentServiceStub(ch)
    plr = project_pb2.ProjectListRequest(limit=10)

    # Auth metadata, no token needed.
    pc = meta.GetPublicClientConfig(auth_pb2.PublicClientAuthConfigRequest(), timeout=5)
    expect(pc.client_id == "flytectl" and pc.authorization_metadata_key == "flyte-authorization"
           and list(pc.scopes) == ["all"] and pc.audience == "flyteadmin", "GetPublicClientConfig", pc)
    md = meta.GetOAuth2Metadata(auth_pb2.OAuth2MetadataRequest(), timeout=5)
    expect(md.issuer == idp.issuer and md.token_endpoint == idp.issuer + "/token"
           and md.jwks_uri == idp.issuer + "/jwks"
           and "client_credentials" in md.grant_types_supported, "GetOAuth2Metadata", md)

    # Refusals.
    c = code_of(lambda: adm.ListProjects(plr, timeout=5))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "missing authorization"), "no token", c)
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=(("flyte-authorization", "Basic x"),)))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "bad authorization scheme"), "bad scheme", c)
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer("not.a.jwt")))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "malformed token"), "malformed token", c)
    frames = raw_h2_frames(port, "/flyteidl.service.AdminService/ListProjects")
    expect(frames == [(1, 5)], "refusal is trailers-only (one HEADERS, END_STREAM|END_HEADERS)", frames)
    frames = raw_h2_frames(port, "/flyteidl.service.AsyncAgentService/GetTaskLogs")
    expect(frames == [(1, 5)], "streaming refusal is trailers-only", frames)
    frames = raw_h2_frames(port, "/flyteidl.service.AuthMetadataService/GetPublicClientConfig")
    expect([t for t, _ in frames] == [1, 0, 1] and frames[-1][1] & 1,
           "(probe sees headers, data, trailers for an answered call)", frames)

    token = idp.token()
    claims = jwt.decode(token, options={"verify_signature": False})
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(token)))
    expect(c[0] == grpc.StatusCode.OK, "valid token in flyte-authorization", c)
    projects = adm.ListProjects(plr, timeout=5, metadata=bearer(token, "authorization"))
    expect([p.id for p in projects.projects] == ["flytesnacks", "demo"]
           and [d.id for d in projects.projects[0].domains] == ["development", "staging", "production"],
           "valid token in authorization; ListProjects", projects)
    # Both headers: FlyteAdmin appends the custom one to `authorization` and reads the first value.
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=(
        ("flyte-authorization", "Bearer junk"), ("authorization", f"Bearer {token}"))))
    expect(c[0] == grpc.StatusCode.OK, "both headers: authorization is read", c)
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=(
        ("flyte-authorization", f"Bearer {token}"), ("authorization", "Bearer junk"))))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "malformed token"),
           "both headers: a bad authorization is not rescued by the custom one", c)
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=(("authorization", f"bEaReR {token}"),)))
    expect(c[0] == grpc.StatusCode.OK, "scheme is case-insensitive", c)

    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged_claims = dict(claims, exp=int(time.time()) + 600)
    hdr = jwt.get_unverified_header(token)
    forged = jwt.encode(forged_claims, forger, algorithm="RS256", headers={"kid": hdr["kid"]})
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(forged)))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "bad signature"), "forged signature", c)
    forged = jwt.encode(forged_claims, forger, algorithm="RS256", headers={"kid": "other"})
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(forged)))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "unknown signing key"), "unknown kid", c)
    forged = jwt.encode(forged_claims, "secret-secret-secret-secret-32by", algorithm="HS256")
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(forged)))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "unsupported algorithm"), "HS256 refused", c)

    other_aud = idp.token(audience="someone-else")
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(other_aud)))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "bad audience"), "wrong audience", c)
    narrow = idp.token(scope="offline")
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(narrow)))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "insufficient scope"), "scope without all", c)
    idp.post("/__test/ttl", body={"accessTokenTTL": 1}, basic=None)
    short = idp.token()
    idp.post("/__test/ttl", body={"accessTokenTTL": 3600}, basic=None)
    time.sleep(2.2)
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(short)))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "token expired"), "expired token", c)

    # Stats.
    stats = admin.cmd({"cmd": "stats"})
    calls = stats["calls"]
    expect(calls[0]["method"] == "/flyteidl.service.AuthMetadataService/GetPublicClientConfig"
           and calls[0]["exempt"] and calls[0]["authorized"], "stats: exempt call recorded", calls[0])
    expect(calls[2]["reason"] == "missing authorization" and calls[2]["header"] is None
           and calls[3]["header"] == "flyte-authorization", "stats: reasons and header", calls[2:4])
    good = [x for x in calls if x["authorized"] and not x["exempt"]]
    expect(good[0]["sub"] == claims["sub"] and good[0]["client_id"] == "agent"
           and good[0]["jti"] == claims["jti"] and good[0]["scope"] == claims["scope"]
           and good[1]["header"] == "authorization", "stats: claims of authorized calls", good[:2])
    expired = calls[-1]
    expect(expired["reason"] == "token expired" and expired["jti"] is not None,
           "stats: refused-for-claim call still names the token", expired)
    expect(token not in json.dumps(stats) and short not in json.dumps(stats), "stats never hold a token")
    expect(stats["unauthenticated"] == sum(1 for x in calls if not x["authorized"]),
           "stats: unauthenticated count", stats["unauthenticated"])

    # Executions.
    md_ok = bearer(token)
    seed = adm.GetExecution(execution_pb2.WorkflowExecutionGetRequest(
        id=identifier_pb2.WorkflowExecutionIdentifier(project="flytesnacks", domain="development",
                                                      name="seed")), timeout=5, metadata=md_ok)
    expect(seed.closure.phase == WP.SUCCEEDED, "seed execution SUCCEEDED", seed.closure.phase)
    created = adm.CreateExecution(execution_pb2.ExecutionCreateRequest(
        project="flytesnacks", domain="development", spec=execution_pb2.ExecutionSpec()),
        timeout=5, metadata=md_ok)
    expect(created.id.name and created.id.project == "flytesnacks", "CreateExecution names it", created)
    get = execution_pb2.WorkflowExecutionGetRequest(id=created.id)
    phases = [adm.GetExecution(get, timeout=5, metadata=md_ok).closure.phase for _ in range(3)]
    expect(phases == [WP.RUNNING, WP.SUCCEEDED, WP.SUCCEEDED], "RUNNING then SUCCEEDED", phases)
    c = code_of(lambda: adm.CreateExecution(execution_pb2.ExecutionCreateRequest(
        project="flytesnacks", domain="development", name=created.id.name), timeout=5, metadata=md_ok))
    expect(c[0] == grpc.StatusCode.ALREADY_EXISTS, "duplicate name", c)
    named = adm.CreateExecution(execution_pb2.ExecutionCreateRequest(
        project="flytesnacks", domain="development", name="mine"), timeout=5, metadata=md_ok)
    expect(named.id.name == "mine", "CreateExecution keeps the given name", named)
    adm.TerminateExecution(execution_pb2.ExecutionTerminateRequest(id=named.id, cause="test"),
                           timeout=5, metadata=md_ok)
    ph = adm.GetExecution(execution_pb2.WorkflowExecutionGetRequest(id=named.id), timeout=5,
                          metadata=md_ok).closure.phase
    expect(ph == WP.ABORTED, "TerminateExecution aborts", ph)
    lr = common_pb2.ResourceListRequest(id=common_pb2.NamedEntityIdentifier(
        project="flytesnacks", domain="development"), limit=2)
    page1 = adm.ListExecutions(lr, timeout=5, metadata=md_ok)
    lr.token = page1.token
    page2 = adm.ListExecutions(lr, timeout=5, metadata=md_ok)
    names = [e.id.name for e in page1.executions] + [e.id.name for e in page2.executions]
    expect(names == ["seed", created.id.name, "mine"] and page2.token == "", "ListExecutions pages", names)
    lr = common_pb2.ResourceListRequest(id=common_pb2.NamedEntityIdentifier(
        project="demo", domain="development"), limit=5)
    expect(len(adm.ListExecutions(lr, timeout=5, metadata=md_ok).executions) == 0,
           "ListExecutions honours project")
    c = code_of(lambda: adm.GetTask(common_pb2.ObjectGetRequest(), timeout=5, metadata=md_ok))
    expect(c[0] == grpc.StatusCode.NOT_FOUND, "GetTask NOT_FOUND", c)
    v = adm.GetVersion(version_pb2.GetVersionRequest(), timeout=5, metadata=md_ok)
    expect(v.control_plane_version.Build == "standin", "GetVersion", v)
    c = code_of(lambda: adm.ListWorkflows(common_pb2.ResourceListRequest(limit=1), timeout=5,
                                          metadata=md_ok))
    expect(c[0] == grpc.StatusCode.UNIMPLEMENTED, "unimplemented method after auth", c)
    c = code_of(lambda: adm.ListWorkflows(common_pb2.ResourceListRequest(limit=1), timeout=5))
    expect(c[0] == grpc.StatusCode.UNAUTHENTICATED, "unimplemented method still needs auth", c)

    # Server streaming.
    call = logs.GetTaskLogs(agent_pb2.GetTaskLogsRequest(lines=5), timeout=5, metadata=md_ok)
    got = [m.body.results[0] for m in call]
    expect(got == [f"line {i}" for i in range(5)]
           and dict(call.trailing_metadata()).get("x-standin-count") == "5", "GetTaskLogs 5 lines",
           (got, call.trailing_metadata()))
    call = logs.GetTaskLogs(agent_pb2.GetTaskLogsRequest(lines=2, token="fail"), timeout=5,
                            metadata=md_ok)
    got = []
    c = code_of(lambda: got.extend(call))
    expect(len(got) == 2 and c == (grpc.StatusCode.FAILED_PRECONDITION, "requested failure"),
           "GetTaskLogs fail after messages", (got, c))
    t0 = time.monotonic()
    c = code_of(lambda: list(logs.GetTaskLogs(agent_pb2.GetTaskLogsRequest(
        lines=1, token="sleep:5000"), timeout=0.5, metadata=md_ok)))
    expect(c[0] == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 2,
           "deadline exceeded while sleeping", c)
    call = logs.GetTaskLogs(agent_pb2.GetTaskLogsRequest(lines=3, token="gap:300"), timeout=5,
                            metadata=md_ok)
    t0 = time.monotonic()
    next(call)
    first = time.monotonic() - t0
    rest = list(call)
    expect(first < 0.25 and len(rest) == 2, "gap: first message arrives before the rest", first)
    call = logs.GetTaskLogs(agent_pb2.GetTaskLogsRequest(lines=1, token="sleep:5000"), timeout=10,
                            metadata=md_ok)
    time.sleep(0.2)
    call.cancel()
    expect(code_of(lambda: list(call))[0] == grpc.StatusCode.CANCELLED, "cancel a sleeping stream")
    c = code_of(lambda: list(logs.GetTaskLogs(agent_pb2.GetTaskLogsRequest(lines=1), timeout=5)))
    expect(c[0] == grpc.StatusCode.UNAUTHENTICATED, "streaming needs auth", c)

    # Bidi: each reply arrives before the next request is sent.
    q = queue.Queue()

    def requests():
        while (item := q.get()) is not None:
            yield item

    call = sync.ExecuteTaskSync(requests(), timeout=5, metadata=md_ok)
    q.put(agent_pb2.ExecuteTaskSyncRequest(header=agent_pb2.CreateRequestHeader(output_prefix="s3://x")))
    r1 = next(call)
    inputs = literals_pb2.LiteralMap(literals={"a": literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=7)))})
    q.put(agent_pb2.ExecuteTaskSyncRequest(inputs=inputs))
    r2 = next(call)
    q.put(None)
    rest = list(call)
    expect(r1.header.resource.message == "header #1: s3://x" and r2.outputs == inputs and not rest
           and dict(call.trailing_metadata()).get("x-standin-received") == "2",
           "ExecuteTaskSync echoes and counts", (r1, r2, call.trailing_metadata()))

    # Control: revoke, reject, reset, errors.
    r = admin.cmd({"cmd": "revoke_seen"})
    expect(r["ok"] and r["revoked"] >= 1, "revoke_seen", r)
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=md_ok))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "token revoked"), "revoked token refused", c)
    fresh = idp.token()
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(fresh)))
    expect(c[0] == grpc.StatusCode.OK, "new token accepted", c)
    expect(admin.cmd({"cmd": "reject", "count": 2}) == {"ok": True}, "reject")
    cs = [code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=bearer(fresh)))[0]
          for _ in range(3)]
    meta.GetPublicClientConfig(auth_pb2.PublicClientAuthConfigRequest(), timeout=5)
    expect(cs == [grpc.StatusCode.UNAUTHENTICATED] * 2 + [grpc.StatusCode.OK],
           "reject refuses the next 2 authed calls", cs)
    expect(admin.cmd({"cmd": "stats"})["calls"][-2]["reason"] is None, "third call authorized")
    expect(admin.cmd({"cmd": "reset"}) == {"ok": True}, "reset")
    s = admin.cmd({"cmd": "stats"})
    expect(s == {"calls": [], "unauthenticated": 0}, "stats empty after reset", s)
    c = code_of(lambda: adm.ListProjects(plr, timeout=5, metadata=md_ok))
    expect(c[0] == grpc.StatusCode.OK, "reset lifts revocations", c)
    expect("error" in admin.cmd("{not json"), "bad JSON answered with error")
    expect("error" in admin.cmd({"cmd": "nope"}), "unknown cmd answered with error")
    expect("error" in admin.cmd("[1]"), "non-object answered with error")
    expect("error" in admin.cmd({"cmd": "reject", "count": -1}), "bad reject count")
    ch.close()

    # Exit on EOF; restart on the same port; exit on SIGTERM.
    expect(admin.close() == 0, "exits 0 at stdin EOF")
    admin = stand_in(idp.issuer, port=port)
    expect(admin.ready == {"port": port}, "restart on the same port", admin.ready)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        c = code_of(lambda: admin_pb2_grpc.AdminServiceStub(ch).ListProjects(
            plr, timeout=5, metadata=bearer(idp.token())))
    expect(c[0] == grpc.StatusCode.OK, "restarted stand-in serves", c)
    clash = subprocess.run([PY, os.path.join(HERE, "standin.py")], env=dict(
        os.environ, ADMIN_CONFIG=json.dumps({"issuer": idp.issuer, "port": port})),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    expect(clash.returncode == 1 and clash.stdout == "", "a taken port fails loudly", clash)
    admin.p.send_signal(signal.SIGTERM)
    expect(admin.p.wait(10) == 0, "exits 0 on SIGTERM")

    with tempfile.TemporaryDirectory() as tmp:
        # Unix socket, custom header.
        path = os.path.join(tmp, "admin.sock")
        admin = stand_in(idp.issuer, unix=path, auth_header="x-auth", required_scope="offline",
                         custom_header_first=True)
        expect(admin.ready == {"unix": path}, "unix address line", admin.ready)
        with grpc.insecure_channel(f"unix:{path}") as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            c = code_of(lambda: stub.ListProjects(plr, timeout=5, metadata=bearer(fresh, "x-auth")
                                                  + (("authorization", "Bearer junk"),)))
            pc = auth_pb2_grpc.AuthMetadataServiceStub(ch).GetPublicClientConfig(
                auth_pb2.PublicClientAuthConfigRequest(), timeout=5)
        expect(c[0] == grpc.StatusCode.OK and pc.authorization_metadata_key == "x-auth",
               "unix socket, custom auth_header (first), required_scope", (c, pc))
        expect(admin.cmd({"cmd": "stats"})["calls"][0]["header"] == "x-auth", "custom header recorded")
        expect(admin.close() == 0 and not os.path.exists(path), "unix socket removed at exit")

        # TLS.
        cert, key = self_signed(tmp)
        admin = stand_in(idp.issuer, tls={"cert": cert, "key": key})
        with open(cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel(f"127.0.0.1:{admin.ready['port']}", creds) as ch:
            c = code_of(lambda: admin_pb2_grpc.AdminServiceStub(ch).ListProjects(
                plr, timeout=5, metadata=bearer(fresh)))
        expect(c[0] == grpc.StatusCode.OK, "TLS", c)
        expect(admin.close() == 0, "TLS stand-in exits")

        # ES256 tokens from a JWKS that is not the IdP's (jwks_uri), and key rotation (refetch).
        es = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(es.public_key()))
        keys = {"keys": [dict(jwk, kid="one", use="sig", alg="ES256")]}
        fetches = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                fetches.append(self.path)
                body = json.dumps(keys).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        iss = "http://issuer.test"
        admin = stand_in(iss, jwks_uri=f"http://127.0.0.1:{httpd.server_port}/keys")

        def es_token(kid, **extra):
            return jwt.encode({"iss": iss, "aud": ["x", "flyteadmin"], "sub": "u", "scp": ["all"],
                               "exp": int(time.time()) + 60, "jti": kid + "-jti", **extra}, es,
                              algorithm="ES256", headers={"kid": kid})

        with grpc.insecure_channel(f"127.0.0.1:{admin.ready['port']}") as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            c1 = code_of(lambda: stub.ListProjects(plr, timeout=5, metadata=bearer(es_token("one"))))
            keys["keys"].append(dict(jwk, kid="two", use="sig", alg="ES256"))
            c2 = code_of(lambda: stub.ListProjects(plr, timeout=5, metadata=bearer(es_token("two"))))
            c3 = code_of(lambda: stub.ListProjects(plr, timeout=5, metadata=bearer(
                es_token("one", iss="http://other"))))
        expect(c1[0] == c2[0] == grpc.StatusCode.OK and len(fetches) == 2,
               "ES256, scp list, aud list, refetch on new kid", (c1, c2, fetches))
        expect(c3 == (grpc.StatusCode.UNAUTHENTICATED, "bad issuer"), "wrong issuer", c3)
        expect(admin.cmd({"cmd": "stats"})["calls"][0]["scope"] == "all", "scp reported as scope")
        admin.close()
        httpd.shutdown()

    # An issuer whose JWKS cannot be fetched (nothing listens on port 1).
    admin = stand_in("http://127.0.0.1:1")
    with grpc.insecure_channel(f"127.0.0.1:{admin.ready['port']}") as ch:
        c = code_of(lambda: admin_pb2_grpc.AdminServiceStub(ch).ListProjects(
            plr, timeout=10, metadata=bearer(fresh)))
    expect(c == (grpc.StatusCode.UNAUTHENTICATED, "jwks unavailable"), "JWKS down", c)
    admin.close()

    bad = subprocess.run([PY, os.path.join(HERE, "standin.py")], env=dict(os.environ, ADMIN_CONFIG="{}"),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    expect(bad.returncode == 2 and bad.stdout == "", "missing issuer exits 2", bad)
    idp.proc.close()
    print("all checks passed")


if __name__ == "__main__":
    main()
