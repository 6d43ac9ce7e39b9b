"""Bearer JWT checks shared by the test peers that stand in for Flyte's control planes
(tests/admin/standin.py, tests/flyte2/standin.py): the token is verified with PyJWT against the
issuer's JWKS, and every refusal has one fixed reason string (the stand-ins' READMEs list them).
Importable from either test venv (both pin PyJWT)."""

import ipaddress
import json
import logging
import ssl
import threading
import urllib.request

import jwt

ALGORITHMS = ("RS256", "ES256")
MAX_JWKS_BYTES = 1 << 20

log = logging.getLogger("bearer")


class AuthFailure(Exception):
    """A reason to refuse a call: `reason` is the message and the recorded reason; `claims` are
    the token's claims when its signature verified (so a record can say whose it was)."""

    def __init__(self, reason, claims=None):
        super().__init__(reason)
        self.reason = reason
        self.claims = claims


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Jwks:
    """The issuer's signing keys by kid: fetched at the first token, and again (once per token)
    when a token names a kid the cache does not know, as after a key rotation."""

    def __init__(self, uri, cafile=None):
        self.uri = uri
        self.ssl = ssl.create_default_context(cafile=cafile) if cafile else None
        self.lock = threading.Lock()
        self.keys = None  # {kid: PyJWK}

    def fetch(self):
        try:
            # No proxy: the JWKS is on loopback and an environment proxy must not intercept it.
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.ssl))
            with opener.open(self.uri, timeout=15) as resp:
                body = resp.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("JWKS too large")
            keyset = jwt.PyJWKSet.from_dict(json.loads(body))
        except Exception as e:  # any failure to get keys is the same outcome for the caller
            log.warning("JWKS fetch from %s failed: %s", self.uri, e)
            raise AuthFailure("jwks unavailable") from e
        self.keys = {k.key_id: k for k in keyset.keys}
        log.info("JWKS fetched: kids %s", sorted(str(k) for k in self.keys))

    def key(self, kid):
        with self.lock:
            if self.keys is None:
                self.fetch()
            elif kid not in self.keys and not (kid is None and len(self.keys) == 1):
                self.fetch()
            if kid is None and len(self.keys) == 1:  # a token without kid and a one-key set
                return next(iter(self.keys.values()))
            if kid not in self.keys:
                raise AuthFailure("unknown signing key")
            return self.keys[kid]


def verify(value, jwks, issuer, audience, leeway, check_aud):
    """The verified claims of a `Bearer <jwt>` header value; raises AuthFailure. `aud` is
    required and checked against `audience` only with `check_aud`. Blocking (JWKS fetch)."""
    scheme, _, token = (value or "").strip().partition(" ")
    if not scheme:
        raise AuthFailure("missing authorization")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthFailure("bad authorization scheme")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise AuthFailure("malformed token") from e
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise AuthFailure("unsupported algorithm")
    key = jwks.key(header.get("kid"))
    # First the signature alone, so a call refused for a claim is still recorded with whose
    # token it was; then PyJWT's own claim checks.
    try:
        claims = jwt.decode(token, key.key, algorithms=[alg], options={
            "verify_exp": False, "verify_nbf": False, "verify_iat": False,
            "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False})
    except jwt.InvalidSignatureError as e:
        raise AuthFailure("bad signature") from e
    except jwt.PyJWTError as e:  # e.g. a key of the wrong type for alg
        raise AuthFailure(f"invalid token ({type(e).__name__})") from e
    try:
        jwt.decode(token, key.key, algorithms=[alg], audience=audience, issuer=issuer,
                   leeway=leeway, options={
                       "require": ["exp", "iss"] + (["aud"] if check_aud else []),
                       "verify_aud": check_aud})
    except jwt.ExpiredSignatureError as e:
        raise AuthFailure("token expired", claims) from e
    except jwt.ImmatureSignatureError as e:
        raise AuthFailure("token not yet valid", claims) from e
    except jwt.InvalidAudienceError as e:
        raise AuthFailure("bad audience", claims) from e
    except jwt.InvalidIssuerError as e:
        raise AuthFailure("bad issuer", claims) from e
    except jwt.MissingRequiredClaimError as e:
        raise AuthFailure(f"missing claim {e.claim}", claims) from e
    except jwt.PyJWTError as e:
        raise AuthFailure(f"invalid token ({type(e).__name__})", claims) from e
    return claims
