"""
Log observers for running poolproxy under twistd.

C{twistd --logger poolproxy.logs.json_observer poolproxy ...} writes the log
to standard output as JSON lines: one JSON object per event, one event per
line, no other framing (unlike L{twisted.logger.jsonFileLogObserver}, which
writes RFC 7464 JSON text sequences with a leading RS character, and which
log shippers usually do not expect).

Every object has these fields:

  - C{time}: when the event was logged, ISO 8601 in UTC with microseconds,
    e.g. C{"2024-05-01T12:00:00.123456Z"};
  - C{level}: C{debug}, C{info}, C{warn}, C{error} or C{critical};
  - C{namespace}: the logger's namespace, e.g. C{poolproxy.service.ProxyService};
  - C{message}: the formatted message;
  - C{system}: the Twisted log system, when the event has one;
  - C{traceback} and C{exception}: for events that carry a failure
    (C{log.failure(...)}), the traceback text and the exception's type;

plus the event's own fields (those not starting with C{log_}), such as
C{backend} or C{why}: strings, integers, floats, booleans and C{None} as they
are, anything else as its C{str()} (never failing: a value that cannot be
stringified is written as a placeholder).
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from typing import IO, Any, Dict

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

__all__ = ["JSONLinesObserver", "event_to_dict", "json_observer"]

# Keys of events from the legacy twisted.python.log API that repeat what the
# core fields already say.
_LEGACY_KEYS = frozenset({"format", "isError", "message", "time", "failure", "system"})


def _iso_utc(timestamp: Any) -> str:
    try:
        moment = datetime.fromtimestamp(float(timestamp), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        moment = datetime.now(tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__name__}>"


def _simple(value: Any) -> Any:
    """A value JSON can hold as it is, else its string."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # NaN and infinities are not JSON.
        return value if math.isfinite(value) else _safe_str(value)
    return _safe_str(value)


def event_to_dict(event: LogEvent) -> Dict[str, Any]:
    """The JSON-able object written for one log event."""
    level = event.get("log_level")
    namespace = event.get("log_namespace")
    try:
        message = formatEvent(event)
    except Exception:  # formatEvent does not raise, but never crash logging
        message = _safe_str(event.get("log_format"))
    record: Dict[str, Any] = {
        "time": _iso_utc(event.get("log_time")),
        "level": getattr(level, "name", None) or (_safe_str(level) if level else "info"),
        "namespace": _safe_str(namespace) if namespace is not None else "",
        "message": _safe_str(message),
    }
    system = event.get("log_system")
    if system is not None and system != "-":
        record["system"] = _safe_str(system)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = _safe_str(failure)
        exc_type = getattr(failure, "type", None)
        if exc_type is not None:
            record["exception"] = _safe_str(
                f"{getattr(exc_type, '__module__', '')}.{getattr(exc_type, '__qualname__', exc_type)}"
            )
    for key, value in list(event.items()):
        if not isinstance(key, str) or key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        if key in record:
            continue  # never let an event field overwrite a core field
        record[key] = _simple(value)
    return record


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event to C{out} as one JSON object on one line, and flushes.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        try:
            line = json.dumps(event_to_dict(event), ensure_ascii=True)
        except Exception as e:  # pragma: no cover - event_to_dict only makes simple values
            line = json.dumps({"time": _iso_utc(None), "level": "error",
                               "namespace": __name__,
                               "message": f"unloggable event: {_safe_str(e)}"})
        self._out.write(line + "\n")
        self._out.flush()


def json_observer() -> JSONLinesObserver:
    """
    The observer factory for C{twistd --logger poolproxy.logs.json_observer}:
    JSON lines on standard output.

    twistd calls this before it starts logging, that is before it replaces
    C{sys.stdout} with a file that feeds the log, so the observer keeps the
    real standard output (writing to the replacement would loop).
    """
    return JSONLinesObserver(sys.stdout)
