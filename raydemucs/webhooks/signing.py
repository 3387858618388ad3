"""The webhook signing secret and signature (Standard Webhooks): the secret stays in the
service's state directory; only signatures leave."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

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
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    partial = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(partial, path)  # the first of two starts at once wins; the other reads its secret
    except FileExistsError:
        pass
    finally:
        partial.unlink()
    return path.read_text().strip()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """`webhook-signature`: `v1,` and base64 of HMAC-SHA256 of `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"
