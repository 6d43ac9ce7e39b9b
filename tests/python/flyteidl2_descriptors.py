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

import importlib

from google.protobuf import descriptor_pb2

# The service modules, as agent/tests/flyte2.rs lists them for FLYTE2_METHODS.
MODULES = ("auth.auth_service", "auth.identity", "actions.actions_service", "cluster.service",
           "dataproxy.dataproxy_service", "project.project_service", "task.task_service",
           "workflow.queue_service", "workflow.run_service", "workflow.state_service")


def descriptor_set():
    out = descriptor_pb2.FileDescriptorSet()
    seen = set()

    def add(fd):
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        fd.CopyToProto(out.file.add())

    for module in MODULES:
        add(importlib.import_module(f"flyteidl2.{module}_pb2").DESCRIPTOR)
    return out.SerializeToString(deterministic=True)


if __name__ == "__main__":
    print(descriptor_set().hex())
