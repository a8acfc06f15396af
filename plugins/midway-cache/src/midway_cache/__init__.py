"""midway-cache: exact and semantic response caching for midway, safe for agents."""

from midway_cache.plugin import CACHE, CachePlugin, CacheService, plugin

__version__ = "0.1.0"
__all__ = ["CACHE", "CachePlugin", "CacheService", "__version__", "plugin"]
