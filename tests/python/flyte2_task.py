"""A Flyte 2 task-like process for the agent's tests: runs the real `flyte` 2.12.1 SDK against the
endpoint in `_U_EP_OVERRIDE` (the agent's Connect port, or the stand-in directly).

    tests/.venv-flyte2/bin/python tests/python/flyte2_task.py a0|remote|denied [PROJECT]

The caller sets the environment as the injector would: `_U_EP_OVERRIDE=http://127.0.0.1:PORT`,
`_U_INSECURE=true`, `_U_ORG_NAME`, `FLYTE_INTERNAL_EXECUTION_PROJECT`/`_DOMAIN`, and `UCTL_CONFIG`,
`FLYTECTL_CONFIG`, `_UNION_EAGER_API_KEY`, `EAGER_API_KEY` empty. This script adds only what a
task pod's command line would carry (run and action names, `memory://` data paths) and bounds
retries (`_F_MAX_RETRIES`, `_F_MAX_BFF_ON_ERR`, both overridable) and time
(`FLYTE2_DRIVER_TIMEOUT`, seconds, default 60).

Subcommands; each prints exactly one JSON line on stdout (the SDK's logs go to stderr):
- `a0`: runs the real task entry point (`a0`, flyte._bin.runtime) on flyte2_tasks.parent, which
  awaits two child tasks (EnqueueAction x2, Watch). `{"ok": true, "a0_exit": 0, "children": 2}`.
- `remote`: `flyte.init_in_cluster()`, `flyte.remote.Run.listall(limit=5)`, then DataProxy
  CreateUploadLocation (the SDK calls SelectCluster first). `{"ok": true, "runs": N, ...,
  "upload_authority": "<host:port the control plane saw>"}`.
- `denied [PROJECT]`: one ListRuns in PROJECT (default: the task's project); prints the Connect
  code the SDK raised, `{"code": "permission_denied", "message": ...}`, and exits 0; exits 1 with
  `{"code": "ok"}` if the call succeeded.
Exit codes: 0 success, 1 wrong outcome, 2 bad usage or environment, 3 timeout.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIRED = ("_U_EP_OVERRIDE", "_U_INSECURE", "_U_ORG_NAME",
            "FLYTE_INTERNAL_EXECUTION_PROJECT", "FLYTE_INTERNAL_EXECUTION_DOMAIN")
TIMEOUT = float(os.environ.get("FLYTE2_DRIVER_TIMEOUT", "60"))


def emit(obj, code=0):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    return code


def fail(message, code=1, **extra):
    sys.stderr.write(f"flyte2_task: {message}\n")
    return emit({"ok": False, "error": message, **extra}, code)


def connect_code(exc):
    """The Connect code of the first ConnectError in an exception's cause/context chain."""
    from connectrpc.errors import ConnectError
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectError):
            return exc.code.value, exc.message
        exc = exc.__cause__ or exc.__context__
    return None, None


def run_a0():
    """The a0 entry point in a child process, as a pod's container command runs it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    run, action = env.setdefault("RUN_NAME", "r1"), env.setdefault("ACTION_NAME", "a0")
    env.setdefault("_U_RUN_BASE", "memory://flyte2-test/runbase")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # nothing left next to the task module
    a0 = [sys.executable, "-c", A0.format(here=HERE)]
    with tempfile.TemporaryDirectory(prefix="flyte2-task.") as tmp:
        inputs = os.path.join(tmp, "inputs.pb")
        open(inputs, "wb").close()  # an empty flyteidl2.task.Inputs: parent() takes none
        cmd = [*a0, "--inputs", inputs, "--outputs-path", "memory://flyte2-test/out",
               "--version", "v1", "--raw-data-path", "memory://flyte2-test/raw",
               "--run-name", run, "--name", action, "--run-start-time", "2026-01-01T00:00:00Z",
               "--resolver", "flyte._internal.resolvers.default.DefaultTaskResolver",
               "mod", "flyte2_tasks", "instance", "parent"]
        try:
            proc = subprocess.run(cmd, env=env, cwd=HERE, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=None, timeout=TIMEOUT)
        except subprocess.TimeoutExpired as e:
            sys.stderr.write((e.stdout or b"").decode(errors="replace"))
            return fail(f"a0 did not finish within {TIMEOUT:g} s", 3)
    out = proc.stdout.decode(errors="replace")
    sys.stderr.write(out)  # the task's own prints, for the test log
    done = "flyte2_tasks: parent done, 2 children" in out
    if proc.returncode != 0 or not done:
        return fail(f"a0 exited {proc.returncode}" + ("" if done else " without the parent finishing"),
                    a0_exit=proc.returncode)
    return emit({"ok": True, "a0_exit": 0, "children": 2})


def run_remote():
    import asyncio

    import flyte
    import flyte.remote as remote
    from flyte._initialize import get_client
    from flyteidl2.dataproxy import dataproxy_service_pb2

    flyte.init_in_cluster()
    runs = list(remote.Run.listall(limit=5))
    names = [r.pb2.action.id.run.name for r in runs]

    async def upload():
        req = dataproxy_service_pb2.CreateUploadLocationRequest(
            org=os.environ["_U_ORG_NAME"], project=os.environ["FLYTE_INTERNAL_EXECUTION_PROJECT"],
            domain=os.environ["FLYTE_INTERNAL_EXECUTION_DOMAIN"], filename="x.txt",
            content_md5=b"0123456789abcdef")
        return await get_client().dataproxy_service.create_upload_location(req)

    resp = asyncio.run(upload())
    return emit({"ok": True, "runs": len(runs), "run_names": names,
                 "signed_url": resp.signed_url, "native_url": resp.native_url,
                 "upload_authority": resp.headers.get("x-standin-authority")})


def run_denied(project):
    import flyte
    import flyte.remote as remote

    flyte.init_in_cluster()
    try:
        runs = list(remote.Run.listall(limit=1, project=project))
    except Exception as e:  # the SDK may wrap the ConnectError
        code, message = connect_code(e)
        if code is None:
            return fail(f"no Connect error in {type(e).__name__}: {e}")
        return emit({"code": code, "message": message})
    return emit({"code": "ok", "runs": len(runs)}, 1)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd not in ("a0", "remote", "denied") or len(sys.argv) > (3 if cmd == "denied" else 2):
        return fail("usage: flyte2_task.py a0|remote|denied [PROJECT]", 2)
    missing = [k for k in REQUIRED if not os.environ.get(k)]
    if missing:
        return fail(f"environment lacks {', '.join(missing)}", 2)
    # Bounded retries: the controller retries a failed EnqueueAction up to 100 times (~20 min).
    os.environ.setdefault("_F_MAX_RETRIES", "3")
    os.environ.setdefault("_F_MAX_BFF_ON_ERR", "1")
    if cmd == "a0":
        return run_a0()

    def timeout(*_):
        fail(f"{cmd} did not finish within {TIMEOUT:g} s", 3)
        os._exit(3)

    signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        if cmd == "remote":
            return run_remote()
        return run_denied(sys.argv[2] if len(sys.argv) > 2 else
                          os.environ["FLYTE_INTERNAL_EXECUTION_PROJECT"])
    except Exception as e:
        code, message = connect_code(e)
        return fail(f"{cmd}: {type(e).__name__}: {e}", 1, code=code)


def exit_now(code):
    """Exits without the interpreter's teardown: flyte 2.12.1's process aborts (SIGABRT, no
    message) in about one exit in 40 after its work is done and its answer printed (seen with and
    without the agent, against the stand-in directly), which says nothing about the calls."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# Run by run_a0 as the task's command instead of the `a0` script: the same entry point
# (flyte._bin.runtime:main, unmodified), ended by exit_now.
A0 = """
import sys
from flyte._bin.runtime import main
sys.argv[0] = "a0"
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
sys.path.insert(0, {here!r})
from flyte2_task import exit_now
exit_now(code)
"""


if __name__ == "__main__":
    exit_now(main() or 0)
