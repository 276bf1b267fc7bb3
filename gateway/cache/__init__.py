"""The response cache (docs/caching.md): the `cache` plugin on proxied routes and
`cache = {...}` on orchestration steps.

Modules:

- ``control``      reading the header fields a cache decides by: Cache-Control, Expires/Date,
                   Age, Vary
- ``rules``        the RFC 9111 decisions as pure functions: may a response be stored, how long
                   is it fresh, may a stored one answer this request, which headers are kept,
                   the cache key, what an unsafe request invalidates
- ``entry``        one stored answer and its record format
- ``store``        where entries live: ``LocalStore`` (an LRU in this process) or Redis
- ``redis_store``  the Redis store, shared by every process and replica
- ``coalesce``     concurrent misses for one key make one upstream call

``control`` and ``rules`` do no I/O, so the plugin and the step cache share one implementation.
"""
