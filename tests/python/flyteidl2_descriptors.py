"""The FileDescriptorSet of the flyteidl2 services the agent proxies on its Connect port
(proto/descriptors/flyteidl2.binpb), from the pinned PyPI flyteidl2 in tests/.venv-flyte2.

    tests/.venv-flyte2/bin/python tests/python/flyteidl2_descriptors.py | xxd -r -p \
        > proto/descriptors/flyteidl2.binpb

Prints, as hex on stdout, every file of the services whose methods the agent lists
(`FLYTE2_METHODS` in agent/src/proxy/connect.rs) and every file they import, dependencies first,
each file once, serialized deterministically. The wheel ships no .proto files, so the descriptors
its generated modules were built from are the source; proto/tests/flyteidl2_python.rs runs this
and compares the bytes with the committed file.

With `methods`, prints instead every method path of those services (`/<service>/<method>`),
sorted, one per line: agent/tests/flyte2.rs checks `FLYTE2_METHODS` against it.
"""

import importlib
import sys

from descriptor_sets import descriptor_set

# The service modules behind FLYTE2_METHODS.
MODULES = ("auth.auth_service", "auth.identity", "actions.actions_service", "cluster.service",
           "dataproxy.dataproxy_service", "project.project_service", "task.task_service",
           "workflow.queue_service", "workflow.run_service", "workflow.state_service")


if __name__ == "__main__":
    modules = [f"flyteidl2.{m}_pb2" for m in MODULES]
    if sys.argv[1:] == ["methods"]:
        paths = [f"/{s.full_name}/{m.name}"
                 for module in modules
                 for s in importlib.import_module(module).DESCRIPTOR.services_by_name.values()
                 for m in s.methods]
        print("\n".join(sorted(paths)))
    else:
        print(descriptor_set(modules).hex())
