"""raydemucs: separate songs into stems with Demucs on a Ray actor pool."""
__version__ = "0.1.0"

from .api import WorkerManager  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .errors import RayDemucsError  # noqa: E402

__all__ = ["WorkerManager", "Config", "load_config", "RayDemucsError", "__version__"]
