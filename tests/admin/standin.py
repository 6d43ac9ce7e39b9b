"""A FlyteAdmin stand-in: a gRPC server built on PyPI flyteidl's generated servicers that treats
auth the way FlyteAdmin does, for the agent's tests. Real FlyteAdmin cannot run here.

Run with the tests/.venv Python; configured by the ADMIN_CONFIG environment variable (JSON);
prints one address line on stdout, answers a JSON-lines control protocol on stdin/stdout and
logs to stderr. See README.md next to this file for the contract.

How FlyteAdmin treats auth (flyteadmin/auth), which this copies:
- Every gRPC method except AuthMetadataService's needs a token. A custom metadata key
  (`grpcAuthorizationHeader`, "flyte-authorization" by default) is appended to `authorization`
  when present, and the first `authorization` value is the one checked (see Auth._token).
- The value is `Bearer <token>` (scheme compared case-insensitively, as grpc-go's AuthFromMD does).
- Failure is UNAUTHENTICATED from a server interceptor, before the handler runs, so no message or
  initial metadata is sent first: the response is trailers-only.
"""

import concurrent.futures
import json
import logging
import os
import secrets
import signal
import ssl
import stat
import string
import sys
import threading
import time
import urllib.parse

import grpc
from flyteidl.admin import agent_pb2, execution_pb2, project_pb2, version_pb2
from flyteidl.core import execution_pb2 as core_execution_pb2
from flyteidl.core import identifier_pb2
from flyteidl.service import admin_pb2_grpc, agent_pb2_grpc, auth_pb2, auth_pb2_grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peers"))
from bearer import AuthFailure, Jwks, is_loopback, verify  # noqa: E402

log = logging.getLogger("admin-standin")

EXEMPT_PREFIX = "/flyteidl.service.AuthMetadataService/"
MAX_CALLS = 100_000  # stats entries kept; a test never gets near this
MAX_EXECUTIONS = 10_000
MAX_LOG_LINES = 1_000_000
MAX_SLEEP_MS = 600_000
MAX_CONTROL_LINE = 1 << 20
PROJECTS = ("flytesnacks", "demo")
DOMAINS = ("development", "staging", "production")
WP = core_execution_pb2.WorkflowExecution.Phase


class Config:
    def __init__(self, raw):
        if not isinstance(raw.get("issuer"), str) or not raw["issuer"]:
            raise ValueError("ADMIN_CONFIG needs issuer (a URL string)")
        self.issuer = raw["issuer"]
        base = self.issuer.rstrip("/")
        self.jwks_uri = raw.get("jwks_uri") or base + "/jwks"
        jwks_host = urllib.parse.urlsplit(self.jwks_uri).hostname or ""
        if not is_loopback(jwks_host):
            raise ValueError(f"jwks_uri must be on loopback, not {jwks_host!r}")
        self.jwks_ca = raw.get("jwks_ca")
        self.audience = raw.get("audience", "flyteadmin")
        self.required_scope = raw.get("required_scope", "all")  # null or "": no scope check
        self.auth_header = raw.get("auth_header", "flyte-authorization").lower()
        self.custom_header_first = bool(raw.get("custom_header_first", False))
        self.leeway = raw.get("leeway", 0)
        self.host = raw.get("host", "127.0.0.1")
        if not is_loopback(self.host):
            raise ValueError(f"host must be a loopback address, not {self.host!r}")
        self.port = raw.get("port", 0)
        self.unix = raw.get("unix")
        self.tls = raw.get("tls")
        self.token_endpoint = raw.get("token_endpoint") or base + "/token"
        self.authorization_endpoint = raw.get("authorization_endpoint") or base + "/auth"
        self.device_authorization_endpoint = raw.get("device_authorization_endpoint", "")
        pc = raw.get("public_client") or {}
        self.public_client = auth_pb2.PublicClientAuthConfigResponse(
            client_id=pc.get("client_id", "flytectl"),
            redirect_uri=pc.get("redirect_uri", "http://localhost:53593/callback"),
            scopes=pc.get("scopes", ["all"]),
            authorization_metadata_key=pc.get("authorization_metadata_key", self.auth_header),
            service_http_endpoint=pc.get("service_http_endpoint", ""),
            audience=pc.get("audience", self.audience),
        )


def scope_string(claims):
    """The token's scopes as one space-separated string, from `scope` (RFC 9068) or else `scp`
    (a list or a string)."""
    if isinstance(claims.get("scope"), str):
        return claims["scope"]
    scp = claims.get("scp")
    if isinstance(scp, str):
        return scp
    if isinstance(scp, list):
        return " ".join(str(s) for s in scp)
    return None


class Auth:
    """Token checks plus the test-controlled state: recorded calls, revocations, forced rejects."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.jwks = Jwks(cfg.jwks_uri, cfg.jwks_ca)
        self.lock = threading.Lock()
        self.calls = []
        self.unauthenticated = 0
        self.seen_jtis = set()  # every jti of a token whose signature verified, never cleared
        self.revoked = set()
        self.reject_next = 0

    def _token(self, metadata):
        """(header name, value) of the credential FlyteAdmin would read; (None, None) if none.

        FlyteAdmin's GetAuthenticationCustomMetadataInterceptor appends the custom header's first
        value to `authorization` (metadata.Join), and grpc-go-middleware's AuthFromMD reads the
        first `authorization` value. So the custom header counts only when `authorization` is
        absent; with `custom_header_first` it wins instead."""
        md = {}
        for key, value in metadata or ():
            md.setdefault(key.lower(), []).append(value)
        found = [("authorization", v) for v in md.get("authorization", ())]
        custom = self.cfg.auth_header
        if custom != "authorization" and md.get(custom):
            found.insert(0 if self.cfg.custom_header_first else len(found), (custom, md[custom][0]))
        return found[0] if found else (None, None)

    def _verify(self, value):
        """The verified claims of a `Bearer <jwt>` value; raises AuthFailure."""
        claims = verify(value, self.jwks, self.cfg.issuer, self.cfg.audience, self.cfg.leeway,
                        check_aud=True)
        need = self.cfg.required_scope
        if need and need not in (scope_string(claims) or "").split():
            raise AuthFailure("insufficient scope", claims)
        return claims

    def check(self, method, metadata):
        """Records the call in the stats; raises AuthFailure when it must be refused."""
        entry = {"method": method, "authorized": True, "exempt": method.startswith(EXEMPT_PREFIX),
                 "header": None, "reason": None,
                 "sub": None, "client_id": None, "jti": None, "scope": None}
        claims = None
        if not entry["exempt"]:
            entry["header"], value = self._token(metadata)
            try:
                if value is None:
                    raise AuthFailure("missing authorization")
                claims = self._verify(value)
            except AuthFailure as e:
                entry["reason"], claims = e.reason, e.claims
        if claims is not None:
            for claim in ("sub", "client_id", "jti"):
                v = claims.get(claim)
                entry[claim] = v if isinstance(v, (str, int)) and not isinstance(v, bool) else None
            entry["scope"] = scope_string(claims)
        with self.lock:
            jti = entry["jti"]
            if jti is not None:
                self.seen_jtis.add(jti)
                if entry["reason"] is None and jti in self.revoked:
                    entry["reason"] = "token revoked"
            if not entry["exempt"] and self.reject_next > 0:
                # A forced refusal wins over whatever the token said.
                self.reject_next -= 1
                entry["reason"] = "rejected by control"
            if entry["reason"] is not None:
                entry["authorized"] = False
                self.unauthenticated += 1
            if len(self.calls) < MAX_CALLS:
                self.calls.append(entry)
        if entry["reason"] is not None:
            log.info("%s: UNAUTHENTICATED (%s)", method, entry["reason"])
            raise AuthFailure(entry["reason"])

    # Control commands.
    def stats(self):
        with self.lock:
            return {"calls": list(self.calls), "unauthenticated": self.unauthenticated}

    def reset(self):
        with self.lock:
            self.calls.clear()
            self.unauthenticated = 0
            self.revoked.clear()
            self.reject_next = 0

    def revoke_seen(self):
        with self.lock:
            self.revoked |= self.seen_jtis
            return len(self.seen_jtis)

    def reject(self, count):
        with self.lock:
            self.reject_next = count


class AuthInterceptor(grpc.ServerInterceptor):
    """Wraps every known method's handler so the auth check runs first, in the worker thread
    (never in gRPC's polling thread, which a JWKS fetch would stall). Aborting before the handler
    sends anything makes the answer trailers-only, like grpc-go's auth interceptors."""

    def __init__(self, auth):
        self.auth = auth

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: UNIMPLEMENTED, no auth (grpc-go runs no interceptor)
            return None
        method = handler_call_details.method

        def guard(behavior):
            def guarded(request, context):
                try:
                    self.auth.check(method, context.invocation_metadata())
                except AuthFailure as e:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, e.reason)
                try:
                    return behavior(request, context)
                except NotImplementedError:  # flyteidl's base servicer; answer without a traceback
                    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} not implemented")
            return guarded

        kinds = {
            (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
            (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
            (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
            (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
        }
        attr, make = kinds[(handler.request_streaming, handler.response_streaming)]
        return make(guard(getattr(handler, attr)),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


def now_ts(msg):
    msg.GetCurrentTime()
    return msg


def clone(msg):
    """A copy to answer with, so later changes to the stored message cannot race serialization."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    return copy


def exec_key(ident):
    return (ident.project, ident.domain, ident.name)


def exec_label(ident):
    return f"{ident.project}/{ident.domain}/{ident.name}"


class Executions:
    """In-memory executions. One made by CreateExecution is RUNNING at its first GetExecution and
    SUCCEEDED from the second on, so a client's poll loop ends. Closures carry no outputs, as
    FlyteAdmin's do when outputs are fetched with GetExecutionData (flytekit 1.16 also fails to
    read a closure whose deprecated `outputs.values` is set)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = {}  # key -> [Execution, GetExecution count]
        seed = execution_pb2.Execution(
            id=identifier_pb2.WorkflowExecutionIdentifier(
                project="flytesnacks", domain="development", name="seed"))
        self._init_closure(seed, WP.SUCCEEDED)
        self.items[exec_key(seed.id)] = [seed, 0]

    @staticmethod
    def _init_closure(ex, phase):
        c = ex.closure
        c.phase = phase
        now_ts(c.created_at)
        now_ts(c.started_at)
        now_ts(c.updated_at)
        if ex.spec.HasField("launch_plan"):
            c.workflow_id.CopyFrom(ex.spec.launch_plan)
            c.workflow_id.resource_type = identifier_pb2.WORKFLOW

    def create(self, request, context):
        if not request.project or not request.domain:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing project or domain")
        name = request.name or "f" + "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(19))
        ident = identifier_pb2.WorkflowExecutionIdentifier(
            project=request.project, domain=request.domain, name=name, org=request.org)
        ex = execution_pb2.Execution(id=ident, spec=request.spec)
        self._init_closure(ex, WP.RUNNING)
        with self.lock:
            if exec_key(ident) in self.items:
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f"execution {exec_label(ident)} already exists")
            if len(self.items) >= MAX_EXECUTIONS:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many executions")
            self.items[exec_key(ident)] = [ex, 0]
        return execution_pb2.ExecutionCreateResponse(id=ident)

    def _find(self, ident, context):
        item = self.items.get(exec_key(ident))
        if item is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"execution {exec_label(ident)} not found")
        return item

    def get(self, ident, context):
        with self.lock:
            item = self._find(ident, context)
            item[1] += 1
            ex = item[0]
            if ex.closure.phase == WP.RUNNING and item[1] >= 2:
                ex.closure.phase = WP.SUCCEEDED
                now_ts(ex.closure.updated_at)
            return clone(ex)

    def exists(self, ident, context):
        with self.lock:
            self._find(ident, context)

    def terminate(self, ident, cause, context):
        with self.lock:
            ex = self._find(ident, context)[0]
            if ex.closure.phase in (WP.SUCCEEDED, WP.FAILED, WP.ABORTED, WP.TIMED_OUT):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"execution {exec_label(ident)} has already terminated")
            ex.closure.phase = WP.ABORTED
            ex.closure.abort_metadata.cause = cause
            ex.closure.abort_metadata.principal = "standin"
            now_ts(ex.closure.updated_at)

    def update(self, ident, state, context):
        with self.lock:
            ex = self._find(ident, context)[0]
            ex.closure.state_change_details.state = state
            now_ts(ex.closure.state_change_details.occurred_at)

    def list(self, project, domain):
        with self.lock:
            return [clone(ex) for (p, d, _), (ex, _) in self.items.items()
                    if (p, d) == (project, domain)]


def page(request, context, items):
    """FlyteAdmin's paging: `limit` must be > 0; `token` is the offset of the next page."""
    if request.limit <= 0:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid value for limit")
    try:
        offset = int(request.token or "0")
        if offset < 0:
            raise ValueError
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid pagination token {request.token}")
    chunk = items[offset:offset + request.limit]
    rest = offset + len(chunk)
    return chunk, (str(rest) if rest < len(items) else "")


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """The AdminService methods the tests use; the rest stay UNIMPLEMENTED (after auth)."""

    def __init__(self):
        self.executions = Executions()

    @staticmethod
    def _project(pid):
        return project_pb2.Project(
            id=pid, name=pid, description=f"stand-in project {pid}",
            domains=[project_pb2.Domain(id=d, name=d) for d in DOMAINS])

    def ListProjects(self, request, context):
        return project_pb2.Projects(projects=[self._project(p) for p in PROJECTS])

    def GetProject(self, request, context):
        if request.id not in PROJECTS:
            context.abort(grpc.StatusCode.NOT_FOUND, f"project {request.id} not found")
        return self._project(request.id)

    def GetDomains(self, request, context):
        return project_pb2.GetDomainsResponse(
            domains=[project_pb2.Domain(id=d, name=d) for d in DOMAINS])

    def GetVersion(self, request, context):
        return version_pb2.GetVersionResponse(control_plane_version=version_pb2.Version(
            Build="standin", Version="v0.0.0-standin", BuildTime="1970-01-01T00:00:00Z"))

    def CreateExecution(self, request, context):
        return self.executions.create(request, context)

    def GetExecution(self, request, context):
        return self.executions.get(request.id, context)

    def GetExecutionData(self, request, context):
        self.executions.exists(request.id, context)
        resp = execution_pb2.WorkflowExecutionGetDataResponse()
        resp.full_inputs.SetInParent()
        resp.full_outputs.SetInParent()
        return resp

    def ListExecutions(self, request, context):
        items = self.executions.list(request.id.project, request.id.domain)
        chunk, token = page(request, context, items)
        return execution_pb2.ExecutionList(executions=chunk, token=token)

    def TerminateExecution(self, request, context):
        self.executions.terminate(request.id, request.cause, context)
        return execution_pb2.ExecutionTerminateResponse()

    def UpdateExecution(self, request, context):
        self.executions.update(request.id, request.state, context)
        return execution_pb2.ExecutionUpdateResponse()

    @staticmethod
    def _not_found(kind, request, context):
        i = request.id
        context.abort(grpc.StatusCode.NOT_FOUND,
                      f"{kind} {i.project}/{i.domain}/{i.name}:{i.version} not found")

    def GetTask(self, request, context):
        self._not_found("task", request, context)

    def GetWorkflow(self, request, context):
        self._not_found("workflow", request, context)

    def GetLaunchPlan(self, request, context):
        self._not_found("launch plan", request, context)


class AuthMetadataService(auth_pb2_grpc.AuthMetadataServiceServicer):
    """What FlyteAdmin announces about its auth; answered without a token."""

    def __init__(self, cfg):
        self.cfg = cfg

    def GetOAuth2Metadata(self, request, context):
        cfg = self.cfg
        return auth_pb2.OAuth2MetadataResponse(
            issuer=cfg.issuer,
            authorization_endpoint=cfg.authorization_endpoint,
            token_endpoint=cfg.token_endpoint,
            response_types_supported=["code", "token", "code token"],
            scopes_supported=list(cfg.public_client.scopes),
            token_endpoint_auth_methods_supported=["client_secret_basic"],
            jwks_uri=cfg.jwks_uri,
            code_challenge_methods_supported=["S256"],
            grant_types_supported=["client_credentials", "authorization_code", "refresh_token"],
            device_authorization_endpoint=cfg.device_authorization_endpoint,
        )

    def GetPublicClientConfig(self, request, context):
        return self.cfg.public_client


def wait(context, ms):
    """Sleeps ms milliseconds, in steps, returning False as soon as the call is over (cancelled
    or past its deadline) so a dead call does not keep a worker thread."""
    end = time.monotonic() + ms / 1000
    while (left := end - time.monotonic()) > 0:
        if not context.is_active():
            return False
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return False
        time.sleep(min(left, 0.02))
    return context.is_active()


def ended(context):
    """Ends a call that `wait` gave up on as a real server does: a call past its deadline gets
    DEADLINE_EXCEEDED (grpc-go handlers return the context's error), never an OK that could reach a
    client whose own deadline timer is late; a cancelled call needs no answer."""
    if context.is_active():
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


class AsyncAgentService(agent_pb2_grpc.AsyncAgentServiceServicer):
    """GetTaskLogs as a controllable server stream. `lines` = messages to send; `token` is a
    comma-separated list of directives: `sleep:MS` before the first message, `gap:MS` between
    messages, `fail` to end with FAILED_PRECONDITION after the messages."""

    def GetTaskLogs(self, request, context):
        sleep_ms = gap_ms = 0
        fail = False
        for directive in filter(None, (d.strip() for d in request.token.split(","))):
            name, _, value = directive.partition(":")
            try:
                if name == "sleep":
                    sleep_ms = int(value)
                elif name == "gap":
                    gap_ms = int(value)
                elif name == "fail" and not value:
                    fail = True
                else:
                    raise ValueError
            except ValueError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"bad token directive {directive!r}")
        if not (0 <= request.lines <= MAX_LOG_LINES and 0 <= sleep_ms <= MAX_SLEEP_MS
                and 0 <= gap_ms <= MAX_SLEEP_MS):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "lines, sleep or gap out of range")
        if sleep_ms and not wait(context, sleep_ms):
            return ended(context)
        for i in range(request.lines):
            if i and gap_ms and not wait(context, gap_ms):
                return ended(context)
            yield agent_pb2.GetTaskLogsResponse(
                body=agent_pb2.GetTaskLogsResponseBody(results=[f"line {i}"]))
        if fail:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "requested failure")
        context.set_trailing_metadata((("x-standin-count", str(request.lines)),))


class SyncAgentService(agent_pb2_grpc.SyncAgentServiceServicer):
    """ExecuteTaskSync as an echoing bidi stream: one response per request, as it arrives."""

    def ExecuteTaskSync(self, request_iterator, context):
        count = 0
        for request in request_iterator:
            count += 1
            if request.HasField("inputs"):
                yield agent_pb2.ExecuteTaskSyncResponse(outputs=request.inputs)
            else:
                what = request.header.output_prefix if request.HasField("header") else "empty"
                yield agent_pb2.ExecuteTaskSyncResponse(
                    header=agent_pb2.ExecuteTaskSyncResponseHeader(
                        resource=agent_pb2.Resource(message=f"header #{count}: {what}")))
        context.set_trailing_metadata((("x-standin-received", str(count)),))


def control(auth, line):
    """One control command (a JSON line) -> one JSON answer."""
    try:
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ValueError("a command is a JSON object")
    except ValueError as e:
        return {"error": f"bad JSON: {e}"}
    cmd = msg.get("cmd")
    if cmd == "stats":
        return auth.stats()
    if cmd == "reset":
        auth.reset()
        return {"ok": True}
    if cmd == "revoke_seen":
        return {"ok": True, "revoked": auth.revoke_seen()}
    if cmd == "reject":
        count = msg.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return {"error": "reject needs count, a non-negative integer"}
        auth.reject(count)
        return {"ok": True}
    return {"error": f"unknown cmd {cmd!r}"}


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="admin-standin %(levelname)s %(message)s")
    try:
        cfg = Config(json.loads(os.environ.get("ADMIN_CONFIG") or "{}"))
    except (ValueError, TypeError, AttributeError) as e:
        log.error("bad ADMIN_CONFIG: %s", e)
        return 2

    auth = Auth(cfg)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=32),
        interceptors=[AuthInterceptor(auth)],
        # gRPC Python sets SO_REUSEPORT by default: a second server could then share a port that a
        # stale stand-in still holds. Off, a clash fails loudly instead.
        options=[("grpc.so_reuseport", 0)],
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(), server)
    auth_pb2_grpc.add_AuthMetadataServiceServicer_to_server(AuthMetadataService(cfg), server)
    agent_pb2_grpc.add_AsyncAgentServiceServicer_to_server(AsyncAgentService(), server)
    agent_pb2_grpc.add_SyncAgentServiceServicer_to_server(SyncAgentService(), server)

    if cfg.unix:
        try:  # a socket file left by an earlier run would make the bind fail
            if stat.S_ISSOCK(os.stat(cfg.unix).st_mode):
                os.unlink(cfg.unix)
        except FileNotFoundError:
            pass
        address = f"unix:{cfg.unix}"
    else:
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        address = f"{host}:{cfg.port}"
    try:
        if cfg.tls:
            with open(cfg.tls["key"], "rb") as k, open(cfg.tls["cert"], "rb") as c:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except (RuntimeError, OSError, KeyError, TypeError) as e:
        log.error("cannot listen on %s: %s", address, e)
        return 1
    if port == 0 and not cfg.unix:  # older gRPC reports a failed bind as port 0
        log.error("cannot listen on %s", address)
        return 1
    # The keys before the first call, as a long-running Admin has them: a first fetch racing
    # a burst of calls on a loaded machine must not turn into refusals. A failure here is not
    # fatal; the first token fetches again.
    try:
        with auth.jwks.lock:
            auth.jwks.fetch()
    except AuthFailure:
        pass
    server.start()
    emit({"unix": cfg.unix} if cfg.unix else {"port": port})
    log.info("listening on %s (%s), issuer %s", address if cfg.unix else f"{host}:{port}",
             "tls" if cfg.tls else "plaintext", cfg.issuer)

    done = threading.Event()

    def read_control():
        # Ends at EOF: the parent closing our stdin (or dying) stops the stand-in; so does a
        # stdout nobody reads any more (BrokenPipeError).
        try:
            while line := sys.stdin.readline(MAX_CONTROL_LINE):
                if len(line) == MAX_CONTROL_LINE and not line.endswith("\n"):
                    # Too long: skip the rest of it, still one answer for the one line.
                    rest = line
                    while rest and not rest.endswith("\n"):
                        rest = sys.stdin.readline(MAX_CONTROL_LINE)
                    emit({"error": "command line too long"})
                elif line.strip():
                    emit(control(auth, line))
        finally:
            done.set()

    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=read_control, daemon=True).start()
    while not done.wait(1):  # a timed wait, so the signal handlers get to run
        pass
    server.stop(grace=1).wait()
    if cfg.unix:
        try:
            os.unlink(cfg.unix)
        except OSError:
            pass
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
