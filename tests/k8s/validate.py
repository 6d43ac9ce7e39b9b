#!/usr/bin/env python3
"""Validate Kubernetes YAML offline, strictly, against the official schemas.

    tests/.venv/bin/python tests/k8s/validate.py [--kubernetes-version 1.30.0] [--crd FILE]... [FILE|-]...

Reads every YAML document of every FILE (`-` or no FILE: stdin). Built-in kinds are checked
against the strict JSON schemas PyPI `kubernetes-validate` ships (an unknown field is an error,
as with `kubectl apply --validate=strict`). Custom resources are checked against the
`openAPIV3Schema` of their CustomResourceDefinition, made strict the same way (a field the API
server would prune is an error) and with `metadata` checked as a real ObjectMeta; by default the
pinned cert-manager CRDs in tests/k8s/crds/ are loaded, `--crd` adds more. A kind with no schema at
all is an error, never a silent pass.

Prints one line per problem, `ERROR <source>: <Kind>/<name>: <field>: <problem>` (or `ERROR
<source>: not YAML: …`), and exits 1 if there is any; otherwise one `ok` line per document and exit
0. Exit 2: bad usage (unsupported Kubernetes version, unreadable file).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import jsonschema
import jsonschema.exceptions
import kubernetes_validate.utils as kv
import referencing
import yaml
from packaging.version import Version

HERE = Path(__file__).resolve().parent
DEFAULT_CRDS = sorted((HERE / "crds").glob("*.yaml"))
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


class UsageError(Exception):
    """Exit 2: the command line or an input cannot be used at all."""


class NotYaml(Exception):
    """An input is not YAML: a problem with the input (exit 1), reported like the others."""


class Loader(yaml.SafeLoader):
    """SafeLoader that reads a bare `=` as the string it is (yaml/pyyaml#89), like kubectl."""


Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: str(node.value))


def schema_version(requested: str) -> str:
    """The newest schema set kubernetes-validate has that is not newer than `requested`."""
    want = Version(requested.lstrip("v"))
    want_mm = (want.major, want.minor)
    versions = [Version(v) for v in kv.all_versions()]
    usable = [v for v in versions if (v.major, v.minor) <= want_mm]
    if not usable or want_mm > (versions[-1].major, versions[-1].minor):
        raise UsageError(
            f"kubernetes-validate has schemas for Kubernetes {versions[0]} to {versions[-1]}, "
            f"not {requested}"
        )
    return str(usable[-1])


def read_documents(source: str) -> Iterator[tuple[int, Any]]:
    """(index, document) for every non-empty YAML document in `source`."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        raise UsageError(f"cannot read {source}: {e}") from e
    try:
        docs = list(yaml.load_all(text, Loader=Loader))
    except yaml.YAMLError as e:
        raise NotYaml(" ".join(str(e).split())) from e
    for i, doc in enumerate(docs):
        if doc is not None:
            yield i, doc


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 CRD schema in which every object rejects fields it does not declare.

    The API server prunes such fields from custom resources (and `kubectl --validate=strict`
    rejects them); a field a manifest sets that would silently vanish is the bug we want to see.
    Objects that declare `x-kubernetes-preserve-unknown-fields` or a map schema
    (`additionalProperties`) are left open.
    """
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if (
            node.get("type") == "object"
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for sub in node.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), (dict, list)):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            walk(node.get(key, []))

    walk(schema)
    return schema


class Schemas:
    """Every schema one run validates against: built-in kinds of one Kubernetes version, plus CRDs."""

    def __init__(self, version: str, crd_files: Iterable[Path]) -> None:
        self.version = schema_version(version)
        self.dir = f"v{self.version}-local-strict"
        definitions = kv.schema_contents(f"kubernetes-json-schema/{self.dir}/_definitions.json", version)
        self.definitions_id = definitions["$id"]
        self.registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
        # (apiVersion, kind) -> (schema, where it came from)
        self.custom: dict[tuple[str, str], tuple[dict, str]] = {}
        for path in crd_files:
            for _, doc in read_documents(str(path)):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    self.add_crd(doc, path)

    def add_crd(self, crd: dict, path: Path) -> None:
        spec = crd["spec"]
        kind = spec["names"]["kind"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            schema = strict(version["schema"]["openAPIV3Schema"])
            api_version = f"{spec['group']}/{version['name']}"
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            schema["$id"] = f"https://crd.invalid/{api_version}/{kind}"
            # A CRD schema says only `metadata: {type: object}`; the API server checks it as ObjectMeta.
            schema.setdefault("properties", {})["metadata"] = {
                "$ref": f"{self.definitions_id}#/$defs/{OBJECT_META}"
            }
            schema.setdefault("required", [])
            for field in ("apiVersion", "kind", "metadata"):
                if field not in schema["required"]:
                    schema["required"].append(field)
            self.custom[(api_version, kind)] = (schema, f"CRD {crd['metadata']['name']} from {path.name}")

    def for_document(self, doc: dict) -> tuple[dict | None, str]:
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if (api_version, kind) in self.custom:
            return self.custom[(api_version, kind)]
        # kubernetes-validate's file naming: rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1.
        group_version = str(api_version)
        if "/" in group_version:
            group, ver = group_version.split("/", 1)
            group_version = f"{group.split('.')[0]}-{ver}"
        name = f"kubernetes-json-schema/{self.dir}/{str(kind).lower()}-{group_version}.json"
        try:
            return kv.schema_contents(name, self.version), f"Kubernetes {self.version} (strict)"
        except FileNotFoundError:
            return None, ""


def field_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def problems(doc: Any, schemas: Schemas) -> Iterator[tuple[str, str]]:
    """(field, problem) for everything wrong with one document."""
    if not isinstance(doc, dict):
        yield "(document)", f"is a {type(doc).__name__}, not a Kubernetes object"
        return
    for field in ("apiVersion", "kind"):
        if not isinstance(doc.get(field), str) or not doc.get(field):
            yield field, "is missing"
    if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
        return
    schema, _ = schemas.for_document(doc)
    if schema is None:
        yield "kind", (
            f"no schema for {doc['kind']} ({doc['apiVersion']}) in Kubernetes {schemas.version}; "
            "if it is a custom resource, pass its CRD with --crd"
        )
        return
    registry = referencing.Resource.from_contents(schema) @ schemas.registry
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            for key in sorted(k for k in error.instance if k not in allowed):
                yield field_path(where + [key]), "unknown field"
            continue
        message = error.message
        if error.context:
            best = jsonschema.exceptions.best_match(error.context)
            message = f"{message} ({field_path(list(best.absolute_path))}: {best.message})"
        yield field_path(where), message


def describe(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "?"
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or "(no name)"
    return f"{doc.get('kind', '?')}/{name}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-k",
        "--kubernetes-version",
        default=kv.latest_version(),
        help=f"Kubernetes version whose schemas to use (default {kv.latest_version()}, the newest "
        "kubernetes-validate knows)",
    )
    parser.add_argument(
        "--crd",
        action="append",
        type=Path,
        default=[],
        help="a file of CustomResourceDefinitions to validate custom resources with "
        "(in addition to tests/k8s/crds/*.yaml)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only problems")
    parser.add_argument("files", nargs="*", default=["-"], help="YAML files; - or none: stdin")
    args = parser.parse_args(argv)
    try:
        schemas = Schemas(args.kubernetes_version, [*DEFAULT_CRDS, *args.crd])
        failed = False
        for source in args.files:
            label = "stdin" if source == "-" else source
            try:
                documents = list(read_documents(source))
            except NotYaml as e:
                print(f"ERROR {label}: not YAML: {e}")
                failed = True
                continue
            for index, doc in documents:
                where = f"{label} (document {index + 1})"
                found = list(problems(doc, schemas))
                for field, problem in found:
                    print(f"ERROR {where}: {describe(doc)}: {field}: {problem}")
                failed |= bool(found)
                if not found and not args.quiet:
                    _, against = schemas.for_document(doc)
                    print(f"ok {where}: {describe(doc)} against {against}")
    except UsageError as e:
        print(f"validate.py: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
