"""A Flyte 2 control-plane stand-in for the agent's tests: flyteidl2's own generated Connect ASGI
applications (PyPI flyteidl2 2.0.51, served by connectrpc 0.10.1) behind Hypercorn, because the
real control plane cannot run here.

Run with the tests/.venv-flyte2 Python; configured by the FLYTE2_CONFIG environment variable
(JSON); prints one address line on stdout and logs to stderr. See README.md next to this file.

What it copies from the real control plane:
- One plaintext port that speaks HTTP/1.1 (what the flyte SDK sends in plaintext) and HTTP/2
  cleartext with prior knowledge (what the agent's upstream client sends) at once: Hypercorn
  switches a connection to h2 when it starts with the `PRI * HTTP/2.0` preface.
- Every flyteidl2 service, in the three protocols connectrpc's server speaks: Connect (unary
  `application/proto`, streams `application/connect+proto`), gRPC (`application/grpc`, h2 only:
  it needs trailers) and gRPC-Web. Methods the stand-in does not implement check auth, then
  answer `unimplemented`, as generated handlers do.
- Auth: every method but `flyteidl2.auth.AuthMetadataService`'s needs `Bearer <JWT>` in the
  header that GetPublicClientConfig announces (`authorization_metadata_key`), verified against
  the IdP's JWKS. A refusal is `unauthenticated`, in whatever form the protocol has (Connect
  unary: HTTP 401 + JSON; Connect stream: end-stream message; gRPC: grpc-status 16).
- A service that is not flyteidl2's (e.g. the Flyte 1 `flyteidl.service.AuthMetadataService`
  an agent tries first) answers gRPC `UNIMPLEMENTED` (12), as grpc-go does for an unknown
  service, and HTTP 404 to anything else.
- Task-controller semantics as far as the SDK needs them: EnqueueAction completes the child at
  once (an ActionUpdate SUCCEEDED to the parent's Watch), Watch replays the parent's children,
  then sends the sentinel ControlMessage, then live updates, until the client goes away.
"""

import asyncio
import contextvars
import importlib
import inspect
import json
import logging
import os
import pkgutil
import signal
import socket
import stat
import sys
import threading
import time
import urllib.parse
from collections import deque

import flyteidl2
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.auth import auth_service_pb2
from flyteidl2.cluster import payload_pb2 as cluster_pb2
from flyteidl2.common import phase_pb2
from flyteidl2.dataproxy import dataproxy_service_pb2 as dataproxy_pb2
from flyteidl2.workflow import (queue_service_pb2, run_definition_pb2, run_service_pb2,
                                state_service_pb2)
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peers"))
from bearer import AuthFailure, Jwks, is_loopback, verify  # noqa: E402

log = logging.getLogger("flyte2-standin")

EXEMPT_SERVICE = "/flyteidl2.auth.AuthMetadataService"
MAX_CALLS = 100_000          # call records kept (the oldest are dropped)
MAX_BODY = 4 << 20           # request body bytes per call
MAX_ACTIONS = 100_000        # enqueued actions remembered for Watch replays
CALL = contextvars.ContextVar("call")  # the current call's record (set by the ASGI layer)


class Config:
    def __init__(self, raw):
        if not isinstance(raw, dict):
            raise ValueError("FLYTE2_CONFIG must be a JSON object")
        self.auth = bool(raw.get("auth", True))
        self.issuer = raw.get("issuer") or ""
        if self.auth and not self.issuer:
            raise ValueError("FLYTE2_CONFIG needs issuer (or \"auth\": false)")
        base = self.issuer.rstrip("/")
        self.jwks_uri = raw.get("jwks_uri") or base + "/jwks"
        if self.auth and not is_loopback(urllib.parse.urlsplit(self.jwks_uri).hostname or ""):
            raise ValueError(f"jwks_uri must be on loopback, not {self.jwks_uri!r}")
        self.audience = raw.get("audience")  # None: `aud` is not checked
        self.auth_header = (raw.get("auth_header") or "authorization").lower()
        self.token_endpoint = raw.get("token_endpoint") or base + "/token"
        self.client_id = raw.get("client_id", "flyte2-standin")
        self.scopes = list(raw.get("scopes", ["all"]))
        self.cluster_endpoint = raw.get("cluster_endpoint", "")
        self.org = raw.get("org", "")
        self.leeway = raw.get("leeway", 0)
        self.host = raw.get("host", "127.0.0.1")
        if not is_loopback(self.host):
            raise ValueError(f"host must be a loopback address, not {self.host!r}")
        self.port = int(raw.get("port", 0))
        self.idle_timeout = float(raw.get("idle_timeout", 60))


class Auth:
    """Bearer JWT checks (tests/peers/bearer.py) and the revocation cut-off."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.jwks = Jwks(cfg.jwks_uri)
        self.revoked_before = None  # tokens with iat <= this are refused

    def verify(self, value):
        """Claims of a `Bearer <jwt>` header value; raises AuthFailure. Blocking (JWKS fetch)."""
        aud = self.cfg.audience
        claims = verify(value, self.jwks, self.cfg.issuer, aud, self.cfg.leeway,
                        check_aud=bool(aud))
        cut = self.revoked_before
        iat = claims.get("iat")
        if cut is not None and (not isinstance(iat, (int, float)) or iat <= cut):
            raise AuthFailure("token revoked", claims)
        return claims


class AuthInterceptor:
    """A connectrpc MetadataInterceptor: runs before every handler (unary or streaming) and
    refuses the call when the ASGI layer's check failed. connectrpc then writes `unauthenticated`
    in the protocol's own form."""

    async def on_start(self, ctx):
        call = CALL.get(None)
        if call is not None and not call["authenticated"]:
            raise ConnectError(Code.UNAUTHENTICATED, call["reason"])

    async def on_end(self, token, ctx, error):
        return None



class Hub:
    """Enqueued actions by parent, and the open Watch streams that want their updates."""

    def __init__(self):
        self.updates = {}   # parent key -> [WatchResponse] (replayed to a new Watch)
        self.count = 0
        self.watchers = {}  # parent key -> set of asyncio.Queue

    def publish(self, key, update):
        if self.count < MAX_ACTIONS:
            self.updates.setdefault(key, []).append(update)
            self.count += 1
        for q in self.watchers.get(key, ()):
            q.put_nowait(update)


def parent_key(run, parent_name):
    return (run.org, run.project, run.domain, run.name, parent_name)


def service_classes():
    """(Protocol class, ASGIApplication class) of every flyteidl2 service."""
    for mod in pkgutil.walk_packages(flyteidl2.__path__, "flyteidl2."):
        if mod.name.endswith("_connect"):
            m = importlib.import_module(mod.name)
            for name, cls in inspect.getmembers(m, inspect.isclass):
                if name.endswith("ASGIApplication") and cls.__module__ == m.__name__:
                    yield getattr(m, name[: -len("ASGIApplication")]), cls


def build_services(cfg, hub):
    """Implementations of the methods the SDK and the agent use; each subclasses the generated
    Protocol, whose other methods raise `unimplemented`."""
    from flyteidl2.auth.auth_service_connect import AuthMetadataService
    from flyteidl2.cluster.service_connect import ClusterService
    from flyteidl2.dataproxy.dataproxy_service_connect import DataProxyService
    from flyteidl2.workflow.queue_service_connect import QueueService
    from flyteidl2.workflow.run_service_connect import RunService
    from flyteidl2.workflow.state_service_connect import StateService

    class Auth_(AuthMetadataService):
        async def get_public_client_config(self, request, ctx):
            return auth_service_pb2.GetPublicClientConfigResponse(
                client_id=cfg.client_id, scopes=cfg.scopes, authorization_metadata_key=cfg.auth_header,
                audience=cfg.audience or "")

        async def get_o_auth2_metadata(self, request, ctx):
            return auth_service_pb2.GetOAuth2MetadataResponse(
                issuer=cfg.issuer, token_endpoint=cfg.token_endpoint, jwks_uri=cfg.jwks_uri,
                scopes_supported=cfg.scopes, grant_types_supported=["client_credentials"],
                token_endpoint_auth_methods_supported=["client_secret_basic"])

    class Queue_(QueueService):
        async def enqueue_action(self, request, ctx):
            a = request.action_id
            out = request.run_output_base.rstrip("/") + f"/{a.name}" if request.run_output_base else ""
            log.info("enqueue %s (parent %s) by %s", a.name, request.parent_action_name, CALL.get({}).get("sub"))
            hub.publish(parent_key(a.run, request.parent_action_name), state_service_pb2.WatchResponse(
                action_update=state_service_pb2.ActionUpdate(
                    action_id=a, phase=phase_pb2.ACTION_PHASE_SUCCEEDED, output_uri=out)))
            return queue_service_pb2.EnqueueActionResponse()

        async def abort_queued_action(self, request, ctx):
            return queue_service_pb2.AbortQueuedActionResponse()

    class State_(StateService):
        async def watch(self, request, ctx):
            p = request.parent_action_id
            key = parent_key(p.run, p.name)
            q = asyncio.Queue()
            gone = CALL.get({}).get("gone") or asyncio.Event()
            hub.watchers.setdefault(key, set()).add(q)
            try:
                for update in list(hub.updates.get(key, ())):
                    yield update
                yield state_service_pb2.WatchResponse(
                    control_message=state_service_pb2.ControlMessage(sentinel=True))
                while not gone.is_set():
                    get = asyncio.ensure_future(q.get())
                    wait_gone = asyncio.ensure_future(gone.wait())
                    await asyncio.wait({get, wait_gone}, return_when=asyncio.FIRST_COMPLETED)
                    wait_gone.cancel()
                    if not get.done():
                        get.cancel()
                        break
                    yield get.result()
            finally:
                hub.watchers[key].discard(q)
                log.info("watch %s ended", p.name)

    def run(org, project, domain, i):
        action = run_definition_pb2.Action()
        action.id.name = "a0"
        r = action.id.run
        r.org, r.project, r.domain, r.name = org, project, domain, f"run{i}"
        action.status.phase = phase_pb2.ACTION_PHASE_SUCCEEDED
        action.status.start_time.FromSeconds(1_700_000_000 + i)
        action.metadata.task.id.name = "standin.task"
        return action

    class Run_(RunService):
        async def list_runs(self, request, ctx):
            if request.WhichOneof("scope_by") == "project_id":
                p = request.project_id
                org, project, domain = p.organization, p.name, p.domain
            else:
                org, project, domain = request.org or cfg.org, "", ""
            return run_service_pb2.ListRunsResponse(
                runs=[run_definition_pb2.Run(action=run(org, project, domain, i)) for i in (1, 2, 3)])

        async def get_run_details(self, request, ctx):
            r = request.run_id
            a = run(r.org, r.project, r.domain, 0)
            a.id.run.name = r.name
            details = run_definition_pb2.RunDetails()
            details.action.id.CopyFrom(a.id)
            details.action.status.CopyFrom(a.status)
            return run_service_pb2.GetRunDetailsResponse(details=details)

    class Cluster_(ClusterService):
        async def select_cluster(self, request, ctx):
            return cluster_pb2.SelectClusterResponse(cluster_endpoint=cfg.cluster_endpoint, cluster="c1")

    class DataProxy_(DataProxyService):
        async def create_upload_location(self, request, ctx):
            name = request.filename or "upload"
            path = f"standin/{request.project}/{request.domain}/{name}"
            return dataproxy_pb2.CreateUploadLocationResponse(
                signed_url=f"memory://{path}", native_url=f"memory://{path}",
                headers={"x-standin-authority": CALL.get({}).get("authority") or ""})

    return {cls.__mro__[1]: cls() for cls in (Auth_, Queue_, State_, Run_, Cluster_, DataProxy_)}


class App:
    """The ASGI application: control endpoints, then one connectrpc app per flyteidl2 service."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.auth = Auth(cfg)
        self.hub = Hub()
        self.calls = deque(maxlen=MAX_CALLS)
        impls = build_services(cfg, self.hub)
        self.apps = {}
        for proto, app_cls in service_classes():
            service = impls.get(proto) or type(proto.__name__ + "Unimplemented", (proto,), {})()
            interceptors = [] if proto.__name__ == "AuthMetadataService" else [AuthInterceptor()]
            app = app_cls(service, interceptors=interceptors, read_max_bytes=MAX_BODY)
            self.apps[app.path] = app
        log.info("serving %d flyteidl2 services", len(self.apps))

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/control/"):
            return await self.control(scope, send)
        # Hypercorn 0.18 drops the whole HTTP/2 connection, every call on it, when request data
        # arrives on a stream it has already answered (pgjones/hypercorn#334, not released), and
        # a refusal answers before the body is read. So the request is read to its end first, as
        # grpc-go and connect-go servers need not do; the SDK's requests are one message each.
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > MAX_BODY:
                return await send_json(send, 413, {"error": f"request body over {MAX_BODY} bytes"})
        buffered = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        headers = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        service = path.rsplit("/", 1)[0]
        app = self.apps.get(service)
        call = {"method": path, "http_version": scope["http_version"],
                "content_type": headers.get("content-type"), "authenticated": True, "reason": None,
                "sub": None, "header_present": self.cfg.auth_header in headers,
                "exempt": app is None or service == EXEMPT_SERVICE}
        self.calls.append(call)
        if not call["exempt"] and self.cfg.auth:
            try:
                claims = await asyncio.to_thread(self.auth.verify, headers.get(self.cfg.auth_header))
                call["sub"] = claims.get("sub")
            except AuthFailure as e:
                call.update(authenticated=False, reason=e.reason,
                            sub=(e.claims or {}).get("sub"))
                log.info("refused %s: %s", path, e.reason)
        if app is None:
            return await self.unknown(scope, headers, send)
        # Per-call state the handlers read (not part of the record): the authority and whether
        # the client went away (connectrpc watches for that but only acts at the next message).
        gone = asyncio.Event()
        CALL.set(dict(call, gone=gone, authority=headers.get(":authority") or headers.get("host")))

        async def replay_receive():
            if buffered:
                return buffered.pop()
            msg = await receive()
            if msg["type"] == "http.disconnect":
                gone.set()
            return msg

        await app(scope, replay_receive, send)

    async def unknown(self, scope, headers, send):
        """Not a flyteidl2 service: gRPC UNIMPLEMENTED (as grpc-go answers an unknown service),
        else a bare 404 (as connectrpc answers an unknown path)."""
        if not headers.get("content-type", "").startswith("application/grpc"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            return await send({"type": "http.response.body", "body": b""})
        status = [(b"grpc-status", b"12"), (b"grpc-message", b"unknown service")]
        trailers = "http.response.trailers" in scope.get("extensions", {}) and \
            headers.get("te") == "trailers"
        await send({"type": "http.response.start", "status": 200, "trailers": trailers,
                    "headers": [(b"content-type", b"application/grpc")] + ([] if trailers else status)})
        await send({"type": "http.response.body", "body": b""})
        if trailers:
            await send({"type": "http.response.trailers", "headers": status, "more_trailers": False})

    async def control(self, scope, send):
        path, method = scope["path"], scope["method"]
        if (method, path) == ("GET", "/control/calls"):
            body = [c for c in self.calls]
        elif (method, path) == ("POST", "/control/revoke"):
            self.auth.revoked_before = time.time()
            log.info("tokens issued at or before %.3f revoked", self.auth.revoked_before)
            body = {"ok": True, "revoked_before": self.auth.revoked_before}
        elif (method, path) == ("POST", "/control/reset"):
            self.calls.clear()
            body = {"ok": True}
        else:
            body = {"error": f"no control endpoint {method} {path}"}
        await send_json(send, 404 if "error" in body else 200, body)


async def send_json(send, status, body):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def watch_stdin(loop, stop):
    """Stops the stand-in when stdin is a pipe that reaches EOF (the parent closed it or died).
    Any other stdin (/dev/null, a terminal) is ignored."""
    try:
        if not stat.S_ISFIFO(os.fstat(0).st_mode):
            return
    except OSError:
        return

    def read():
        while os.read(0, 4096):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read, daemon=True).start()


async def amain(cfg):
    app = App(cfg)
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((cfg.host, cfg.port))
        sock.listen(128)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", cfg.host, cfg.port, e)
        return 1
    hc = HypercornConfig()
    hc.bind = [f"fd://{sock.fileno()}"]
    hc.accesslog = None
    hc.errorlog = log
    hc.keep_alive_timeout = cfg.idle_timeout
    hc.graceful_timeout = 1
    hc.h11_max_incomplete_size = 64 * 1024
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch_stdin(loop, stop)
    host, port = sock.getsockname()[:2]
    address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    server = asyncio.ensure_future(serve(app, hc, shutdown_trigger=stop.wait))
    await asyncio.sleep(0.05)  # Hypercorn has taken the socket once serve() has started
    if server.done():
        server.result()
    sys.stdout.write(json.dumps({"address": address}) + "\n")
    sys.stdout.flush()
    log.info("listening on %s (HTTP/1.1 + h2c), auth %s, header %s", address,
             "on" if cfg.auth else "off", cfg.auth_header)
    await server
    log.info("stopped")
    return 0


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="flyte2-standin %(levelname)s %(message)s")
    try:
        cfg = Config(json.loads(os.environ.get("FLYTE2_CONFIG") or "{}"))
    except (ValueError, TypeError) as e:
        log.error("bad FLYTE2_CONFIG: %s", e)
        return 2
    return asyncio.run(amain(cfg))


if __name__ == "__main__":
    sys.exit(main())
