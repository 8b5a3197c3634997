"""Who is calling: `Authorization: Bearer <key>` -> tenant (or admin).

Keys are kept and compared only as sha256 digests. The presented key is hashed first, so
the lookup's timing depends on the digest, never on how many characters of a real key an
attacker guessed; the final check is `hmac.compare_digest` on the 32-byte digests.
"""

from __future__ import annotations

import hashlib
import hmac

from proxy.config import Config, TenantConfig
from proxy.errors import AuthenticationFailed, PermissionDenied, RouteNotFound


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <key>'.")
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def authenticate_tenant(config: Config, authorization: str | None) -> TenantConfig:
    """The tenant owning the presented key, or a 401 that never echoes the key."""
    digest = _digest(bearer_token(authorization))
    tenant = config.tenant_by_key.get(digest)
    if tenant is None or not any(hmac.compare_digest(digest, d) for d in tenant.key_digests):
        raise AuthenticationFailed("Incorrect API key provided.")
    return tenant


def is_admin(config: Config, authorization: str | None) -> bool:
    """True when the key is one of `admin.api_keys` (checked against every one)."""
    try:
        digest = _digest(bearer_token(authorization))
    except AuthenticationFailed:
        return False
    found = False
    for candidate in config.admin.key_digests:
        found |= hmac.compare_digest(digest, candidate)
    return found


def require_admin(config: Config, authorization: str | None) -> None:
    """401 without a valid key, 403 for a tenant key."""
    if is_admin(config, authorization):
        return
    authenticate_tenant(config, authorization)
    raise PermissionDenied("This endpoint needs an admin key.")


def visible_tenants(config: Config, authorization: str | None, wanted: str | None) -> tuple[list[str], bool]:
    """The tenants this key may see (all for admins, its own otherwise) and whether it is admin."""
    if is_admin(config, authorization):
        if wanted is None:
            return [t.name for t in config.tenants], True
        if wanted not in config.tenant_index:
            raise RouteNotFound(f"No tenant named {wanted!r}.")
        return [wanted], True
    tenant = authenticate_tenant(config, authorization)
    if wanted is not None and wanted != tenant.name:
        raise PermissionDenied("A tenant key can only see its own tenant.")
    return [tenant.name], False
