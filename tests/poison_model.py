"""A model whose forward kills the scheduler actor of the service it runs in (Ray restarts it):
the task no service restart should run forever. Loaded by the workers as `tests.poison_model`,
like `tests/leaky_model.py`."""
from __future__ import annotations

from demucs.hdemucs import HDemucs


class PoisonHDemucs(HDemucs):
    def forward(self, mix):
        import ray

        from raydemucs.core.actors import get_scheduler

        service = ray.get_runtime_context().get_actor_name().split(":")[0]  # SERVICE:worker-id
        ray.kill(get_scheduler(service), no_restart=False)
        return super().forward(mix)
