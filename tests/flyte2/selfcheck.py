"""Self-check of the Flyte 2 stand-in and the task driver, without the agent (by hand, not CI):

    tests/.venv-flyte2/bin/python tests/flyte2/selfcheck.py

1. Auth off: the driver (tests/python/flyte2_task.py) runs `a0` and `remote` straight against the
   stand-in; `curl --http2-prior-knowledge` gets Connect answers on the same port as HTTP/1.1;
   gRPC over h2c (raw frames, the `h2` package) to the Flyte 1 AuthMetadataService gets
   grpc-status 12 and to flyteidl2's a valid GetPublicClientConfig.
2. Auth on: a throwaway RS256 key, its JWKS served on loopback, tokens minted here; checks
   refusals (Connect unary, Connect stream, gRPC), acceptance, `sub` in /control/calls,
   /control/revoke, and the driver's `denied` and bounded `a0`.
Loopback only. Prints one line per check and `N passed, N failed`; exits non-zero on a failure.
"""
import asyncio
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import h2.connection
import h2.events
import jwt
import pyqwest
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from cryptography.hazmat.primitives.asymmetric import rsa
from flyteidl2.auth import auth_service_pb2
from flyteidl2.workflow import queue_service_pb2, run_service_pb2, state_service_pb2
from flyteidl2.workflow.queue_service_connect import QueueServiceClient
from flyteidl2.workflow.run_service_connect import RunServiceClient
from flyteidl2.workflow.state_service_connect import StateServiceClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
STANDIN = os.path.join(ROOT, "tests", "flyte2", "standin.py")
DRIVER = os.path.join(ROOT, "tests", "python", "flyte2_task.py")
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1"
results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f"  ({detail})" if detail and not ok else ""),
          flush=True)


class Standin:
    def __init__(self, cfg):
        env = dict(os.environ, FLYTE2_CONFIG=json.dumps(cfg))
        self.proc = subprocess.Popen([PY, STANDIN], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()  # the stand-in prints it within a few seconds
        self.address = json.loads(line)["address"]
        self.base = f"http://{self.address}"

    def control(self, what, method="GET"):
        req = urllib.request.Request(self.base + "/control/" + what, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def stop(self):
        self.proc.stdin.close()  # EOF on its stdin pipe stops it
        self.proc.wait(timeout=10)


def driver(sub, address, timeout=60, extra=()):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "NO_PROXY": "127.0.0.1", "_U_EP_OVERRIDE": f"http://{address}", "_U_INSECURE": "true",
           "_U_ORG_NAME": "testorg", "FLYTE_INTERNAL_EXECUTION_PROJECT": "proj",
           "FLYTE_INTERNAL_EXECUTION_DOMAIN": "development", "UCTL_CONFIG": "",
           "FLYTECTL_CONFIG": "", "_UNION_EAGER_API_KEY": "", "EAGER_API_KEY": "",
           "FLYTE2_DRIVER_TIMEOUT": str(timeout)}
    p = subprocess.run([PY, DRIVER, sub, *extra], env=env, capture_output=True,
                       timeout=timeout + 30)
    out = p.stdout.decode().strip().splitlines()
    try:
        return p.returncode, json.loads(out[-1]) if out else None, p.stderr.decode()
    except ValueError:
        return p.returncode, None, p.stderr.decode()


def grpc(address, path, message=b"", headers=()):
    """One gRPC unary call over h2c prior knowledge: (status, headers, data, trailers)."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", address),
                          (":path", path), ("content-type", "application/grpc"),
                          ("te", "trailers"), *headers])
    conn.send_data(1, struct.pack(">BI", 0, len(message)) + message, end_stream=True)
    sock.sendall(conn.data_to_send())
    resp_headers, data, trailers, done = {}, b"", {}, False
    while not done:
        chunk = sock.recv(65536)
        if not chunk:
            break
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                resp_headers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.DataReceived):
                data += ev.data
                conn.acknowledge_received_data(len(ev.data), 1)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        sock.sendall(conn.data_to_send())
    sock.close()
    status = trailers.get("grpc-status", resp_headers.get("grpc-status"))
    return status, resp_headers, data[5:], trailers


def curl_h2c(address, path, body):
    p = subprocess.run(["curl", "-s", "--noproxy", "*", "--http2-prior-knowledge", "-o", "-",
                        "-w", "\n%{http_version} %{http_code}", "-H", "content-type: application/json",
                        "-d", body, f"http://{address}{path}"], capture_output=True, timeout=30)
    return p.stdout.decode()


async def h2_watch(base, protocol):
    """A Watch over HTTP/2 prior knowledge (as the agent's upstream client sends it): the sentinel
    arrives before the stream ends, then an update for a child enqueued meanwhile."""
    client = pyqwest.Client(pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP2))
    state = StateServiceClient(base, http_client=client, protocol=protocol)
    queue = QueueServiceClient(base, http_client=client, protocol=protocol)
    req = state_service_pb2.WatchRequest()
    req.parent_action_id.name = "h2-" + protocol.name
    it = aiter(state.watch(req))
    first = await asyncio.wait_for(anext(it), 10)
    enq = queue_service_pb2.EnqueueActionRequest(parent_action_name=req.parent_action_id.name)
    enq.action_id.name = "child"
    await asyncio.wait_for(queue.enqueue_action(enq), 10)
    second = await asyncio.wait_for(anext(it), 10)
    await it.aclose()
    return first.control_message.sentinel, second.action_update.action_id.name


def auth_off():
    s = Standin({"auth": False, "org": "testorg"})
    try:
        rc, out, err = driver("a0", s.address)
        check("auth off: driver a0 exits 0 (two children)", rc == 0 and out and out["ok"], f"{rc} {out} {err[-2000:]}")
        calls = [c["method"].rsplit("/", 1)[1] for c in s.control("calls")]
        check("auth off: a0 made 1 Watch + 2 EnqueueAction",
              calls.count("Watch") >= 1 and calls.count("EnqueueAction") == 2, str(calls))
        check("auth off: the SDK spoke HTTP/1.1", all(c["http_version"] == "1.1" for c in s.control("calls")))
        rc, out, err = driver("remote", s.address)
        check("auth off: driver remote lists 3 runs and gets an upload location",
              rc == 0 and out and out["runs"] == 3 and out["signed_url"].startswith("memory://")
              and out["upload_authority"] == s.address, f"{rc} {out} {err[-2000:]}")
        methods = [c["method"] for c in s.control("calls")]
        check("auth off: SelectCluster came before CreateUploadLocation",
              methods[-2:] == ["/flyteidl2.cluster.ClusterService/SelectCluster",
                               "/flyteidl2.dataproxy.DataProxyService/CreateUploadLocation"], str(methods))
        out = curl_h2c(s.address, "/flyteidl2.cluster.ClusterService/SelectCluster", "{}")
        check("auth off: curl --http2-prior-knowledge gets a Connect answer over HTTP/2",
              out.endswith("\n2 200") and '"cluster": "c1"' in out, out)
        check("auth off: calls record http_version 2 for it", s.control("calls")[-1]["http_version"] == "2")
        for protocol in (ProtocolType.CONNECT, ProtocolType.GRPC):
            got = asyncio.run(h2_watch(s.base, protocol))
            check(f"auth off: {protocol.name} Watch over h2c streams sentinel then update",
                  got == (True, "child"), str(got))
        status, hdrs, _, trailers = grpc(s.address, "/flyteidl.service.AuthMetadataService/GetPublicClientConfig")
        check("gRPC Flyte 1 AuthMetadataService -> grpc-status 12",
              status == "12" and hdrs.get(":status") == "200" and "grpc-status" in trailers, f"{hdrs} {trailers}")
        s.control("reset", "POST")
        check("control/reset empties calls", s.control("calls") == [])
    finally:
        s.stop()


class Idp:
    """A throwaway RS256 key and its JWKS on a loopback HTTP server."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [dict(jwk, kid="k1", alg="RS256", use="sig")]}).encode()

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"

    def token(self, **claims):
        now = int(time.time())
        base = {"iss": self.issuer, "sub": "agent", "aud": "flyte2", "iat": now, "exp": now + 300}
        base.update(claims)
        base = {k: v for k, v in base.items() if v is not None}
        return jwt.encode(base, self.key, algorithm="RS256", headers={"kid": "k1"})


async def connect_calls(base, header, good):
    """Connect (HTTP/1.1, pyqwest) unary and server-stream calls with and without a token."""
    out = {}
    runs = RunServiceClient(base)
    state = StateServiceClient(base)
    req = run_service_pb2.ListRunsRequest(org="testorg")
    for name, hdrs in (("none", {}), ("good", {header: f"Bearer {good}"}),
                       ("lower", {header: f"bearer {good}"}), ("basic", {header: "Basic eDp5"})):
        try:
            resp = await runs.list_runs(req, headers=hdrs)
            out[name] = len(resp.runs)
        except ConnectError as e:
            out[name] = (e.code.value, e.message)
    watch_req = state_service_pb2.WatchRequest()
    watch_req.parent_action_id.name = "a0"
    try:
        async for _ in state.watch(watch_req):
            out["watch"] = "message"
            break
    except ConnectError as e:
        out["watch"] = (e.code.value, e.message)
    it = state.watch(watch_req, headers={header: f"Bearer {good}"})
    first = await asyncio.wait_for(anext(aiter(it)), 10)
    out["watch_good"] = first.control_message.sentinel
    await it.aclose()
    return out


def auth_on():
    idp = Idp()
    s = Standin({"issuer": idp.issuer, "audience": "flyte2", "auth_header": "flyte-authorization",
                 "token_endpoint": idp.issuer + "/token", "org": "testorg"})
    hdr = "flyte-authorization"
    try:
        status, _, data, _ = grpc(s.address, "/flyteidl2.auth.AuthMetadataService/GetPublicClientConfig")
        resp = auth_service_pb2.GetPublicClientConfigResponse.FromString(data) if status == "0" else None
        check("gRPC flyteidl2 GetPublicClientConfig answers without a token",
              resp is not None and resp.authorization_metadata_key == hdr and resp.audience == "flyte2", str(resp))
        status, _, data, _ = grpc(s.address, "/flyteidl2.auth.AuthMetadataService/GetOAuth2Metadata")
        resp = auth_service_pb2.GetOAuth2MetadataResponse.FromString(data) if status == "0" else None
        check("gRPC flyteidl2 GetOAuth2Metadata announces issuer and token_endpoint",
              resp is not None and resp.issuer == idp.issuer and resp.token_endpoint == idp.issuer + "/token", str(resp))
        good = idp.token()
        status, *_ = grpc(s.address, "/flyteidl2.workflow.RunService/ListRuns")
        check("gRPC ListRuns without a token -> grpc-status 16", status == "16", str(status))
        status, _, data, _ = grpc(s.address, "/flyteidl2.workflow.RunService/ListRuns",
                                  run_service_pb2.ListRunsRequest(org="o").SerializeToString(),
                                  [(hdr, f"Bearer {good}")])
        check("gRPC ListRuns with a token -> 3 runs",
              status == "0" and len(run_service_pb2.ListRunsResponse.FromString(data).runs) == 3, str(status))
        status, *_ = grpc(s.address, "/flyteidl2.workflow.RunService/ListRuns", b"",
                          [("authorization", f"Bearer {good}")])
        check("a token in `authorization` instead of the announced header is refused", status == "16")
        out = asyncio.run(connect_calls(s.base, hdr, good))
        check("Connect unary without a token -> unauthenticated",
              out["none"] == ("unauthenticated", "missing authorization"), str(out))
        check("Connect unary with a token (scheme any case) -> 3 runs",
              out["good"] == 3 and out["lower"] == 3, str(out))
        check("Connect unary Basic -> unauthenticated", out["basic"][0] == "unauthenticated", str(out))
        check("Connect stream (Watch) without a token -> unauthenticated",
              out["watch"] == ("unauthenticated", "missing authorization"), str(out))
        check("Connect stream (Watch) with a token -> sentinel", out["watch_good"] is True, str(out))
        calls = s.control("calls")
        ok = [c for c in calls if c["authenticated"] and not c["exempt"]]
        check("calls record sub and header_present for accepted calls",
              ok and all(c["sub"] == "agent" and c["header_present"] for c in ok), json.dumps(calls))
        exempt = [c for c in calls if c["exempt"]]
        check("calls record AuthMetadataService calls as exempt",
              len(exempt) == 2 and all(c["http_version"] == "2" for c in exempt), json.dumps(exempt))

        async def one(token):
            try:
                await RunServiceClient(s.base).list_runs(run_service_pb2.ListRunsRequest(),
                                                         headers={hdr: f"Bearer {token}"})
                return "ok"
            except ConnectError as e:
                return e.message

        now = int(time.time())
        for name, token, reason in (
                ("expired", idp.token(iat=now - 600, exp=now - 300), "token expired"),
                ("bad audience", idp.token(aud="other"), "bad audience"),
                ("bad issuer", idp.token(iss="http://127.0.0.1:1"), "bad issuer"),
                ("no exp", idp.token(exp=None), "missing claim exp"),
                ("garbage", "abc", "malformed token")):
            got = asyncio.run(one(token))
            check(f"refused: {name}", got == reason, got)
        s.control("revoke", "POST")
        got = asyncio.run(one(good))
        check("after revoke, an older token -> token revoked", got == "token revoked", got)
        time.sleep(1.1)
        got = asyncio.run(one(idp.token()))
        check("after revoke, a newer token is accepted", got == "ok", got)
        rc, out, err = driver("denied", s.address)
        check("driver denied reports the SDK's code (unauthenticated: the SDK sends no token)",
              rc == 0 and out == {"code": "unauthenticated", "message": "missing authorization"},
              f"{rc} {out} {err[-1500:]}")
        t0 = time.monotonic()
        rc, out, err = driver("a0", s.address, timeout=8)
        took = time.monotonic() - t0
        # The SDK gives up on its own (the task fails: exit 1) or the driver's timeout ends it (3).
        check("driver a0 without a token fails within its timeout",
              rc in (1, 3) and out.get("ok") is False and took < 20, f"{rc} {out} {took:.1f}s")
    finally:
        s.stop()
        idp.server.shutdown()


def main():
    auth_off()
    auth_on()
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
