"""What flytekit builds for its first Admin call in a task pod, run by injector/tests/coherence.rs
as a separate process with exactly the task container's env (what the injector gave it).

Usage: flytekit_auth_mode.py first-call
  Config.auto()'s resolved auth mode and command, then FlyteRemote's first Admin call
  (list_projects_paginated) and what that built: the authenticator's class, how many times
  flytekit asked Admin's AuthMetadataService for its client config, whether any
  PKCE or device-flow authenticator was constructed, and whether keyring loaded a backend
  (`import flytekit` imports the keyring module itself, so the module being imported says
  nothing; the backend is what costs ~50-70 ms and what an interactive flow would use).
  Then, as flytekit would after an UNAUTHENTICATED, the authenticator's refresh_credentials():
  the exception type and message, and whether any credentials resulted.
Prints one JSON line.
"""

import json
import sys


def first_call():
    from flytekit.clients.auth import authenticator as authn

    built = []
    for cls in (authn.PKCEAuthenticator, authn.DeviceCodeAuthenticator):
        original = cls.__init__

        def record(self, *args, _original=original, _name=cls.__name__, **kwargs):
            built.append(_name)
            _original(self, *args, **kwargs)

        cls.__init__ = record

    from flytekit.clients import auth_helper

    authenticators = []
    get_authenticator = auth_helper.get_authenticator

    def recording_get_authenticator(*args, **kwargs):
        authenticators.append(get_authenticator(*args, **kwargs))
        return authenticators[-1]

    auth_helper.get_authenticator = recording_get_authenticator

    asked = []
    get_client_config = auth_helper.RemoteClientConfigStore.get_client_config

    def recording_get_client_config(self):
        asked.append(True)
        return get_client_config(self)

    auth_helper.RemoteClientConfigStore.get_client_config = recording_get_client_config

    import keyring.core
    from flytekit.configuration import Config
    from flytekit.remote import FlyteRemote

    config = Config.auto()
    platform = config.platform
    remote = FlyteRemote(config, default_project="flytesnacks", default_domain="development")
    projects, _ = remote.client.list_projects_paginated(limit=10)

    authenticator = authenticators[0] if authenticators else None
    seen = {
        "auth_mode": getattr(platform.auth_mode, "value", platform.auth_mode),
        "command": platform.command,
        "projects": sorted(p.id for p in projects),
        "authenticators": [type(a).__name__ for a in authenticators],
        "client_config_asked": len(asked),
        "interactive_built": built,
        "keyring_backend": None
        if keyring.core._keyring_backend is None
        else type(keyring.core._keyring_backend).__name__,
    }
    # Only the non-interactive ones: a PKCE refresh (the control run) would start a browser flow.
    if type(authenticator).__name__ not in ("CommandAuthenticator", "AgentAuthenticator"):
        print(json.dumps(seen), flush=True)
        return
    try:
        authenticator.refresh_credentials()
        seen["refresh"] = {"error": None, "credentials": authenticator.get_credentials() is not None}
    except Exception as e:  # noqa: BLE001 - the test asserts on the type and message
        seen["refresh"] = {
            "error": type(e).__name__,
            "message": str(e),
            "credentials": authenticator.get_credentials() is not None,
        }
    seen["keyring_backend_after_refresh"] = (
        None if keyring.core._keyring_backend is None else type(keyring.core._keyring_backend).__name__
    )
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["first-call"]:
        sys.exit(__doc__)
    first_call()
