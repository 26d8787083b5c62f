"""
Hooks: decisions users write in Python (who may connect, which cluster
serves a request, which requests are allowed), called by the frontends.

  - L{poolproxy.hooks.points}: the hook points, what each receives and may return;
  - L{poolproxy.hooks.loading}: C{module:callable} strings imported, at
    start and on reload;
  - L{poolproxy.hooks.calling}: calling one, whatever it returns (a value,
    a Deferred, a coroutine), within its timeout, counted;
  - L{poolproxy.hooks.subjects}: the client and request objects hooks get.
"""
