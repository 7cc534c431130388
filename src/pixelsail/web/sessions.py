"""Visitors' sessions: random ids, least recently used first, bounded in number and age.

A session that is gone is not simply unknown: the store remembers (for a bounded number of ids) whether it was
dropped to make room for newer visitors or expired after a while unused, so the page can tell the visitor what
happened instead of a bare "not found".
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelsail.predictor import ChatSession
from pixelsail.web.errors import HttpError

GONE_STATUS = 410  # HTTP "Gone": the session existed and was closed


@dataclass
class Session:
    image: np.ndarray
    chat: ChatSession
    last_used: float = field(default_factory=time.monotonic)


class SessionStore:
    """Sessions by random id; expired or surplus ones are dropped and remembered as such (410 with the reason)."""

    def __init__(self, max_sessions: int, ttl_s: float, remember_closed: int = 4096):
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.remember_closed = remember_closed
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._closed: OrderedDict[str, str] = OrderedDict()  # id -> why it was closed
        self._lock = threading.Lock()

    def add(self, session: Session) -> str:
        sid = secrets.token_urlsafe(18)
        with self._lock:
            self._expire()
            self._items[sid] = session
            while len(self._items) > self.max_sessions:
                old, _ = self._items.popitem(last=False)
                self._close(old, f"this image's session was closed to make room for newer visitors (the server "
                                 f"keeps {self.max_sessions} at once): load the image again")
        return sid

    def get(self, sid: Any) -> Session:
        if not isinstance(sid, str) or not sid:
            raise HttpError(400, "missing session_id: load an image first")
        with self._lock:
            self._expire()
            session = self._items.get(sid)
            if session is None:
                why = self._closed.get(sid)
                if why is not None:
                    raise HttpError(GONE_STATUS, why)
                raise HttpError(404, "unknown session (the server may have restarted): load the image again")
            session.last_used = time.monotonic()
            self._items.move_to_end(sid)
            return session

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _close(self, sid: str, why: str) -> None:
        self._closed[sid] = why
        while len(self._closed) > self.remember_closed:
            self._closed.popitem(last=False)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._items.items() if now - v.last_used > self.ttl_s]:
            del self._items[sid]
            self._close(sid, f"this image's session expired after {_duration(self.ttl_s)} unused: "
                             "load the image again")


def _duration(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} minutes"
