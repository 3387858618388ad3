"""raydemucs: separate songs into stems with Demucs on a Ray actor pool."""
__version__ = "0.1.0"

from .client.manager import WorkerManager  # noqa: E402
from .core.config import Config, load_config  # noqa: E402
from .core.errors import RayDemucsError  # noqa: E402

__all__ = ["WorkerManager", "Config", "load_config", "RayDemucsError", "__version__"]
