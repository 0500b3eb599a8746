"""API resources: ``files``, ``tunings``, ``models``, ``chat`` (sync and async twins)."""
