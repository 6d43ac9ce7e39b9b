"""The FileDescriptorSet of the flyteidl2 services the agent proxies on its Connect port
(proto/descriptors/flyteidl2.binpb), from the pinned PyPI flyteidl2 in tests/.venv-flyte2.

    tests/.venv-flyte2/bin/python tests/python/flyteidl2_descriptors.py | xxd -r -p \
        > proto/descriptors/flyteidl2.binpb

Prints, as hex on stdout, every file of the services whose methods the agent lists
(`FLYTE2_METHODS` in agent/src/proxy/connect.rs) and every file they import, dependencies first,
each file once, serialized deterministically. The wheel ships no .proto files, so the descriptors
its generated modules were built from are the source; proto/tests/flyteidl2_python.rs runs this
and compares the bytes with the committed file.
"""

from descriptor_sets import descriptor_set

# The service modules, as agent/tests/flyte2.rs lists them for FLYTE2_METHODS.
MODULES = ("auth.auth_service", "auth.identity", "actions.actions_service", "cluster.service",
           "dataproxy.dataproxy_service", "project.project_service", "task.task_service",
           "workflow.queue_service", "workflow.run_service", "workflow.state_service")


if __name__ == "__main__":
    print(descriptor_set(f"flyteidl2.{m}_pb2" for m in MODULES).hex())
