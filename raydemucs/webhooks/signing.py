"""The webhook signing secrets and signature (Standard Webhooks): the service's secret stays in
its state directory; each owner's tasks are signed with a secret derived from it for that owner
alone, so that no API key can sign events for another's receivers. Only signatures leave."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from ..core.statedir import private_dir, write_private

SECRET_FILE = "webhook-secret"
SECRET_PREFIX = "whsec_"


def load_secret(state_dir: Path) -> str:
    """The service's signing secret, `whsec_` and base64 of 32 random bytes, made on first use
    in `STATE_DIR/webhook-secret` (mode 0600)."""
    path = state_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    private_dir(state_dir)
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    write_private(path, secret + "\n", replace=False)  # of two starts at once, the first wins
    return path.read_text().strip()


def _key_of(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def owner_secret(secret: str, owner: str) -> str:
    """The secret an owner's tasks are signed with: the service's own `secret` for owner ''
    (the CLI, a loopback service without keys), else HMAC-SHA256 of the owner's id under it."""
    if not owner:
        return secret
    derived = hmac.new(_key_of(secret), f"owner:{owner}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(derived).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """`webhook-signature`: `v1,` and base64 of HMAC-SHA256 of `id.timestamp.body`."""
    digest = hmac.new(_key_of(secret), f"{message_id}.{timestamp}.{body}".encode(),
                      hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"
