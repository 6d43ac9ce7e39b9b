"""A FileDescriptorSet built from generated protobuf modules: the files of the given modules and
every file they import, dependencies first (the order a descriptor pool is built in), each once,
serialized deterministically. Shared by flyteidl_fixtures.py (FlyteAdmin's services, from
tests/.venv) and flyteidl2_descriptors.py (Flyte 2's, from tests/.venv-flyte2): each venv has its
own protobuf, and this module needs only that one.
"""

import importlib

from google.protobuf import descriptor_pb2


def descriptor_set(modules):
    """The serialized FileDescriptorSet of `modules` (dotted module names) and their imports."""
    out = descriptor_pb2.FileDescriptorSet()
    seen = set()

    def add(fd):
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        fd.CopyToProto(out.file.add())

    for module in modules:
        add(importlib.import_module(module).DESCRIPTOR)
    return out.SerializeToString(deterministic=True)
