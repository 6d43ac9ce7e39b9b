"""What flytekit's SecretsManager does for a list of secret references, for the agent's parity test.

Reads {"cases": [{"group", "group_version", "key"}]} on stdin; the FLYTE_SECRETS_* env vars configure
flytekit as in a task pod. Prints, per case, the env var and file flytekit looks at and what get()
returns (or null when it finds nothing).
"""

import json
import sys

from flytekit.core.context_manager import SecretsManager

manager = SecretsManager()
out = []
for case in json.load(sys.stdin)["cases"]:
    group, version, key = case["group"], case.get("group_version") or None, case.get("key") or None
    try:
        value = manager.get(group, key, group_version=version)
    except ValueError:
        value = None
    out.append({
        "env_var": manager.get_secrets_env_var(group, key, group_version=version),
        "file": manager.get_secrets_file(group, key, group_version=version),
        "value": value,
    })
print(json.dumps(out))
