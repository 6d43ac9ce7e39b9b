#!/usr/bin/env python3
"""Render or lint a Helm chart offline, with Helm itself (PyPI `helm-python-sdk`, which embeds
Helm's Go SDK: no helm binary, no cluster, no network).

    tests/.venv/bin/python tests/k8s/helm.py render CHART [--name N] [--namespace NS] [--values JSON] [--upgrade] [--notes]
    tests/.venv/bin/python tests/k8s/helm.py lint CHART [--namespace NS] [--values JSON]

render: the manifests `helm template` would print (hooks included), one `# Source: <template>`
document per object, templates in name order; with --notes, NOTES.txt instead. --values is a JSON
object merged over the chart's values.yaml, as `helm install -f` does; --upgrade renders as for
`helm upgrade` (.Release.IsUpgrade).
lint: `helm lint --strict` (warnings are errors); prints one line per finding.

Exit codes: 0 rendered (or lint clean); 1 a template failed (`fail`, a bad template) or lint found
problems; 3 the values were refused by the chart's values.schema.json (the message names the key);
2 bad usage (unreadable chart, values that are not a JSON object).
"""

from __future__ import annotations

import argparse
import json
import sys

import helm_python
from helm_python import Chart

EXIT_TEMPLATE = 1
EXIT_USAGE = 2
EXIT_SCHEMA = 3
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def values_arg(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(usage(f"--values is not JSON: {e}"))
    if not isinstance(values, dict):
        raise SystemExit(usage("--values must be a JSON object"))
    return values


def usage(message: str) -> int:
    print(f"helm.py: {message}", file=sys.stderr)
    return EXIT_USAGE


def load(path: str) -> Chart:
    try:
        return Chart.load(path)
    except helm_python.HelmError as e:
        raise SystemExit(usage(f"cannot load chart {path}: {e}"))


def render(args: argparse.Namespace) -> int:
    chart = load(args.chart)
    values = values_arg(args.values)
    # The schema is checked on its own first, so that a refused value is told apart from a
    # template that failed (render would raise HelmValuesError for both a schema problem and
    # values that are not a map).
    try:
        chart.validate_schema(chart.merge_values(values))
    except helm_python.HelmValuesError as e:
        print(f"values refused by {args.chart}/values.schema.json:\n{e}", file=sys.stderr)
        return EXIT_SCHEMA
    try:
        manifests = chart.render(
            values,
            name=args.name,
            namespace=args.namespace,
            is_install=not args.upgrade,
            is_upgrade=args.upgrade,
            revision=2 if args.upgrade else 1,
        )
    except helm_python.HelmError as e:
        print(f"rendering {args.chart} failed:\n{e}", file=sys.stderr)
        return EXIT_TEMPLATE
    if args.notes:
        notes = [text for path, text in manifests.items() if path.endswith("/NOTES.txt")]
        sys.stdout.write("".join(notes))
        return 0
    for path in sorted(manifests):
        if path.endswith("/NOTES.txt"):
            continue
        for doc in manifests[path].split("\n---"):
            if doc.strip() and any(not line.lstrip().startswith("#") for line in doc.strip().splitlines()):
                sys.stdout.write(f"---\n# Source: {path}\n{doc.strip(chr(10))}\n")
    return 0


def lint(args: argparse.Namespace) -> int:
    report = helm_python.lint(
        args.chart,
        values_arg(args.values),
        strict=True,
        namespace=args.namespace,
        kube_version="v1.30.0",
    )
    failed = False
    for message in report.get("messages", []):
        severity = SEVERITY.get(message.get("severity"), "UNKNOWN")
        print(f"[{severity}] {message.get('path')}: {message.get('error', '').strip()}")
        failed |= message.get("severity", 0) >= 2
    failed |= bool(report.get("errors"))
    print(f"{report.get('total_charts_linted', 0)} chart(s) linted, {'failed' if failed else 'no problems'}")
    return EXIT_TEMPLATE if failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render")
    r.add_argument("chart")
    r.add_argument("--name", default="flyte-auth-agent")
    r.add_argument("--namespace", default="default")
    r.add_argument("--values", help="a JSON object of values")
    r.add_argument("--upgrade", action="store_true")
    r.add_argument("--notes", action="store_true")
    r.set_defaults(run=render)
    l = sub.add_parser("lint")
    l.add_argument("chart")
    l.add_argument("--namespace", default="default")
    l.add_argument("--values", help="a JSON object of values")
    l.set_defaults(run=lint)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
