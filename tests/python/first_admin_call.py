"""One fresh flytekit process's first Admin call, timed, for injector/benches/task_first_call.rs.

Builds FlyteRemote(Config.auto()) and its client from the env (whatever the bench gives it: the
status quo's client secret, or the task env the injector sets), then times the first
`list_projects_paginated`: everything flytekit does for it (building the authenticator, its
AuthMetadataService calls, any token request, the call itself). Prints one JSON line:
{"build_ms", "first_call_ms", "projects", "authenticator"}.
"""

import json
import time


def main():
    from flytekit.clients import auth_helper
    from flytekit.configuration import Config
    from flytekit.remote import FlyteRemote

    authenticators = []
    get_authenticator = auth_helper.get_authenticator

    spent = {"authenticator_ms": 0.0}

    def recording_get_authenticator(*args, **kwargs):
        started = time.perf_counter()
        authenticators.append(get_authenticator(*args, **kwargs))
        spent["authenticator_ms"] += (time.perf_counter() - started) * 1e3
        return authenticators[-1]

    auth_helper.get_authenticator = recording_get_authenticator

    started = time.perf_counter()
    remote = FlyteRemote(Config.auto(), default_project="flytesnacks", default_domain="development")
    client = remote.client
    built = time.perf_counter()
    projects, _ = client.list_projects_paginated(limit=10)
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "build_ms": (built - started) * 1e3,
                "first_call_ms": (done - built) * 1e3,
                "authenticator_ms": spent["authenticator_ms"],
                "projects": len(projects),
                "authenticators": [type(a).__name__ for a in authenticators],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
