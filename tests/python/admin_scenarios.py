"""What code inside a Flyte task does with FlyteAdmin, run by agent/tests/admin_proxy.rs as a
separate process with only the env a pod would have (FLYTE_PLATFORM_URL=unix://…/agent.sock and
friends, never a client secret). Each scenario prints one JSON line with what it saw; the Rust
test asserts on it and on what the Admin stand-in recorded.

Usage: admin_scenarios.py SCENARIO [ARG]
  remote     FlyteRemote(Config.auto()): fetch an execution, list projects
  eager      get_plugin().get_remote(None, project, domain), then what the eager controller does:
             create an execution, poll it to completion, list executions, terminate one
  default    flyte_auth_agent.remote.default() from agent/python, then the same as `remote`
  external   FlyteRemote(Config.auto()) in ExternalCommand mode, talking to Admin directly
  call [forged]  one GetExecution with plain grpc over the socket: {"code", "message", "seconds"};
             with `forged`, the call carries an `authorization` header of its own
  stream N   server-streaming GetTaskLogs of N messages: messages and trailing metadata
  deadline   GetTaskLogs that sleeps past a 0.5 s deadline: the status code
  token NAME flyte_auth_agent.token(NAME): {"token"} or {"error": exception type, "message"}
  admin-token  flyte_auth_agent.admin_token(): {"token"} or {"error", "message"}
  scope      the execution-scope policy through the socket with plain flyteidl stubs: the task's
             own GetExecution/ListExecutions/CreateExecution, then the same for another project
             and domain, CreateWorkflowEvent, RegisterProject, a TaskExecutionGetRequest whose
             inner execution id names another project, a gzip-compressed GetExecution of another
             project, and ListProjects/GetVersion (read-only, name no project):
             {name: {"code", "message"}}
  bidi N     ExecuteTaskSync: send a message, wait for its echo, N times (a proxy that buffered
             the request stream would deadlock here), then half-close
"""

import json
import os
import sys
import time

PROJECT, DOMAIN = "flytesnacks", "development"


def out(value):
    print(json.dumps(value), flush=True)


def remote_calls(remote):
    from flytekit.models.core.identifier import WorkflowExecutionIdentifier

    # The client FlyteRemote holds, as fetch_execution uses it (fetch_execution would go on to
    # fetch the launch plan, which the stand-in does not have).
    execution = remote.client.get_execution(WorkflowExecutionIdentifier(PROJECT, DOMAIN, "seed"))
    projects = remote.client.list_projects()
    return {
        "execution": execution.id.name,
        "phase": execution.closure.phase,
        "projects": sorted(p.id for p in projects.projects),
    }


def scenario_remote():
    from flytekit.configuration import Config
    from flytekit.remote import FlyteRemote

    out(remote_calls(FlyteRemote(Config.auto(), default_project=PROJECT, default_domain=DOMAIN)))


def scenario_default():
    from flyte_auth_agent import remote

    r = remote.default()
    result = remote_calls(r)
    result["default_project"] = r.default_project
    result["default_domain"] = r.default_domain
    out(result)


def scenario_external():
    scenario_remote()


def scenario_eager():
    from flytekit.configuration.plugin import get_plugin
    from flytekit.models import common as common_models
    from flytekit.models import execution as execution_models
    from flytekit.models import literals
    from flytekit.models.core import identifier as id_models
    from flytekit.models.core.execution import WorkflowExecutionPhase

    remote = get_plugin().get_remote(None, PROJECT, DOMAIN)
    client = remote.client
    spec = execution_models.ExecutionSpec(
        launch_plan=id_models.Identifier(id_models.ResourceType.LAUNCH_PLAN, PROJECT, DOMAIN, "sub_wf", "v1"),
        metadata=execution_models.ExecutionMetadata(
            execution_models.ExecutionMetadata.ExecutionMode.SYSTEM, "eager", 1
        ),
        notifications=execution_models.NotificationList([]),
        labels=common_models.Labels({}),
        annotations=common_models.Annotations({}),
    )
    created = client.create_execution(PROJECT, DOMAIN, "eager-child", spec, literals.LiteralMap({}))
    phases = []
    for _ in range(50):  # bounded poll, as the eager controller's loop is
        execution = client.get_execution(created)
        phases.append(WorkflowExecutionPhase.enum_to_string(execution.closure.phase))
        if execution.closure.phase in (WorkflowExecutionPhase.SUCCEEDED, WorkflowExecutionPhase.FAILED, WorkflowExecutionPhase.ABORTED):
            break
    executions, _ = client.list_executions_paginated(PROJECT, DOMAIN, limit=10)
    other = client.create_execution(PROJECT, DOMAIN, "eager-other", spec, literals.LiteralMap({}))
    client.terminate_execution(other, "eager workflow finished")
    terminated = client.get_execution(other)
    out(
        {
            "created": created.name,
            "phases": phases,
            "listed": sorted(e.id.name for e in executions),
            "terminated_phase": WorkflowExecutionPhase.enum_to_string(terminated.closure.phase),
        }
    )


def channel():
    import grpc

    return grpc.insecure_channel(os.environ["FLYTE_PLATFORM_URL"])


def scenario_call(forged=None):
    import grpc
    from flyteidl.admin import execution_pb2
    from flyteidl.core import identifier_pb2
    from flyteidl.service import admin_pb2_grpc

    stub = admin_pb2_grpc.AdminServiceStub(channel())
    request = execution_pb2.WorkflowExecutionGetRequest(
        id=identifier_pb2.WorkflowExecutionIdentifier(project=PROJECT, domain=DOMAIN, name="seed")
    )
    # A task presenting a credential of its own, which the agent must replace.
    metadata = (("authorization", "Bearer forged.jwt.value"),) if forged else None
    started = time.monotonic()
    try:
        stub.GetExecution(request, timeout=20, metadata=metadata)
        code, message = "OK", ""
    except grpc.RpcError as e:
        code, message = e.code().name, e.details()
    out({"code": code, "message": message, "seconds": time.monotonic() - started})


def scenario_stream(n):
    from flyteidl.admin import agent_pb2
    from flyteidl.service import agent_pb2_grpc

    stub = agent_pb2_grpc.AsyncAgentServiceStub(channel())
    call = stub.GetTaskLogs(agent_pb2.GetTaskLogsRequest(task_type="test", lines=int(n)), timeout=20)
    lines = [line for response in call for line in response.body.results]
    out({"lines": lines, "trailers": dict(call.trailing_metadata()), "code": call.code().name})


def scenario_deadline():
    import grpc
    from flyteidl.admin import agent_pb2
    from flyteidl.service import agent_pb2_grpc

    stub = agent_pb2_grpc.AsyncAgentServiceStub(channel())
    started = time.monotonic()
    try:
        for _ in stub.GetTaskLogs(agent_pb2.GetTaskLogsRequest(lines=1, token="sleep:5000"), timeout=0.5):
            pass
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    out({"code": code, "seconds": time.monotonic() - started})


def scenario_bidi(n):
    import queue

    from flyteidl.admin import agent_pb2
    from flyteidl.core import literals_pb2
    from flyteidl.service import agent_pb2_grpc

    stub = agent_pb2_grpc.SyncAgentServiceStub(channel())
    outbox = queue.Queue()

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    call = stub.ExecuteTaskSync(requests(), timeout=20)
    echoes = []
    outbox.put(agent_pb2.ExecuteTaskSyncRequest(header=agent_pb2.CreateRequestHeader()))
    echoes.append(next(call).WhichOneof("res"))
    for _ in range(int(n) - 1):
        outbox.put(agent_pb2.ExecuteTaskSyncRequest(inputs=literals_pb2.LiteralMap()))
        echoes.append(next(call).WhichOneof("res"))
    outbox.put(None)
    rest = list(call)
    out({"echoes": echoes, "after_close": len(rest), "trailers": dict(call.trailing_metadata())})


def scenario_scope():
    import grpc
    from flyteidl.admin import event_pb2, execution_pb2, project_pb2, task_execution_pb2, version_pb2
    from flyteidl.admin import common_pb2
    from flyteidl.core import identifier_pb2 as ids
    from flyteidl.event import event_pb2 as events
    from flyteidl.service import admin_pb2_grpc

    stub = admin_pb2_grpc.AdminServiceStub(channel())

    def wf(project=PROJECT, domain=DOMAIN, name="seed"):
        return ids.WorkflowExecutionIdentifier(project=project, domain=domain, name=name)

    def create(project=PROJECT, domain=DOMAIN, name="scoped-child", lp_project=PROJECT):
        lp = ids.Identifier(resource_type=ids.LAUNCH_PLAN, project=lp_project, domain=domain,
                            name="sub_wf", version="v1")
        return execution_pb2.ExecutionCreateRequest(
            project=project, domain=domain, name=name, spec=execution_pb2.ExecutionSpec(launch_plan=lp))

    def listing(project=PROJECT, domain=DOMAIN):
        return common_pb2.ResourceListRequest(
            id=common_pb2.NamedEntityIdentifier(project=project, domain=domain), limit=10)

    forged = task_execution_pb2.TaskExecutionGetRequest(id=ids.TaskExecutionIdentifier(
        task_id=ids.Identifier(resource_type=ids.TASK, project=PROJECT, domain=DOMAIN, name="t", version="v1"),
        node_execution_id=ids.NodeExecutionIdentifier(node_id="n0", execution_id=wf(project="payroll")),
    ))
    calls = {
        "get_own": (stub.GetExecution, execution_pb2.WorkflowExecutionGetRequest(id=wf()), None),
        "list_own": (stub.ListExecutions, listing(), None),
        "create_own": (stub.CreateExecution, create(), None),
        "get_other_project": (stub.GetExecution, execution_pb2.WorkflowExecutionGetRequest(id=wf(project="payroll")), None),
        "get_other_domain": (stub.GetExecution, execution_pb2.WorkflowExecutionGetRequest(id=wf(domain="production")), None),
        "list_other_project": (stub.ListExecutions, listing(project="payroll"), None),
        "create_other_domain": (stub.CreateExecution, create(domain="production", name="x"), None),
        "create_foreign_launch_plan": (stub.CreateExecution, create(name="y", lp_project="payroll"), None),
        "workflow_event": (stub.CreateWorkflowEvent, event_pb2.WorkflowExecutionEventRequest(
            event=events.WorkflowExecutionEvent(execution_id=wf())), None),
        "register_project": (stub.RegisterProject, project_pb2.ProjectRegisterRequest(
            project=project_pb2.Project(id="mine", name="mine")), None),
        "forged_nested": (stub.GetTaskExecution, forged, None),
        # Another project's, gzipped (long enough that grpc compresses it): the agent reads it.
        "compressed": (stub.GetExecution,
                       execution_pb2.WorkflowExecutionGetRequest(id=wf(project="payroll", name="c" * 4096)),
                       grpc.Compression.Gzip),
        "list_projects": (stub.ListProjects, project_pb2.ProjectListRequest(), None),
        "version": (stub.GetVersion, version_pb2.GetVersionRequest(), None),
    }
    seen = {}
    for name, (method, request, compression) in calls.items():
        try:
            method(request, timeout=20, compression=compression)
            seen[name] = {"code": "OK", "message": ""}
        except grpc.RpcError as e:
            seen[name] = {"code": e.code().name, "message": e.details()}
    out(seen)


def package_call(f, *args):
    try:
        out({"token": f(*args)})
    except Exception as e:  # what a task would see
        out({"error": type(e).__name__, "message": str(e)})


def scenario_token(name):
    import flyte_auth_agent

    package_call(flyte_auth_agent.token, name)


def scenario_admin_token():
    import flyte_auth_agent

    package_call(flyte_auth_agent.admin_token)


if __name__ == "__main__":
    scenarios = {
        "remote": scenario_remote,
        "eager": scenario_eager,
        "default": scenario_default,
        "external": scenario_external,
        "call": scenario_call,
        "stream": scenario_stream,
        "deadline": scenario_deadline,
        "bidi": scenario_bidi,
        "scope": scenario_scope,
        "token": scenario_token,
        "admin-token": scenario_admin_token,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in scenarios:
        raise SystemExit(__doc__)
    scenarios[sys.argv[1]](*sys.argv[2:])
