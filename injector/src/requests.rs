//! A pod's token requests, from its annotations: `flyte.tokens/t<i>` (flytepropeller's form) and
//! `flyte.org/token-requests` (flyteidl JSON), checked by the agent's own rules.
