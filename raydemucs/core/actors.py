"""How raydemucs's Ray actors are named and reached: one namespace, one name per service's
scheduler, a Ray call's failure as one of our errors, and the node this process runs on.

Nothing here imports Ray at module level: the client's commands that never join a cluster stay
fast.
"""
from __future__ import annotations

from .errors import RayDemucsError, ServiceUnavailable

NAMESPACE = "raydemucs"


def scheduler_name(service: str) -> str:
    """The named scheduler actor of service `service`: `SERVICE:scheduler`."""
    return f"{service}:scheduler"


def get_scheduler(service: str):
    """The running scheduler actor of `service`; `ServiceUnavailable` when there is none."""
    import ray

    try:
        return ray.get_actor(scheduler_name(service), namespace=NAMESPACE)
    except ValueError:
        raise ServiceUnavailable(f"no raydemucs service {service!r} is running; start one with "
                                 "`python -m raydemucs start` or use `submit --wait`") from None


def as_our_error(error: BaseException) -> BaseException:
    """A failed Ray call's error as callers should see it: our own error raised inside the actor
    as itself, a lost actor or cluster as `ServiceUnavailable`, anything else unchanged."""
    import ray.exceptions

    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, RayDemucsError):
        return error.cause
    if isinstance(error, ray.exceptions.RayActorError):
        return ServiceUnavailable(f"the raydemucs scheduler is unreachable: "
                                  f"{str(error).splitlines()[0] if str(error) else 'it died'}")
    if isinstance(error, ray.exceptions.RaySystemError):
        return ServiceUnavailable(f"Ray is unreachable: {error}")
    return error


def node_id() -> str | None:
    """The Ray node this process runs on; None outside a Ray cluster."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
