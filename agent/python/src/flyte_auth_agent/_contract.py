"""Names the injector reads from a pod, shared by :mod:`.tokens` and :mod:`.flytekit_auth` (a leaf:
it imports nothing, so neither module imports the other for them)."""

#: The annotation by which a pod asks the injector for a flytekit auth mode.
FLYTEKIT_AUTH_ANNOTATION = "flyte.org/auth-agent-flytekit-auth"
#: The flytekit auth mode :mod:`flyte_auth_agent.flytekit_auth` provides.
FLYTEKIT_AUTH_MODE = "flyte_auth_agent"
