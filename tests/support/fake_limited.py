"""A fake OpenAI-compatible provider that enforces its own rate limit, as a real account does.

`LimitedOpenAI(rpm=..., window=...)` answers chat completions like `FakeOpenAI` while fewer than
`rpm` of them arrived in the last `window` seconds (a sliding window, counted on arrival), and 429
with `Retry-After` (and OpenAI's error body) past it. With `announce=True` every answer carries
OpenAI's rate-limit headers (`x-ratelimit-limit-requests`, `-remaining-requests`,
`-reset-requests` in OpenAI's duration format; as OpenAI documents it, the time until the limit
"resets to its initial state": here, until the newest request counted leaves the window. A 429's
`Retry-After` is the time until the oldest leaves: the first room). `accepted` lists when each
answered request arrived (monotonic), `refused` counts the 429s; `max_in_window()` is the most
accepted in any window, for tests asserting the gateway kept under the limit.
"""
from __future__ import annotations

import bisect
import math
import time
from collections import deque
from dataclasses import replace

from tests.support.fake_openai import CHAT_PATH, FakeOpenAI, error_body
from tests.support.fake_upstream import Recorded, Reply


def openai_duration(seconds: float) -> str:
    """`seconds` in OpenAI's header format: `1m30s`, `2s`, `150ms`."""
    if seconds < 1:
        return f"{max(1, int(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"


class LimitedOpenAI(FakeOpenAI):
    """A fake OpenAI API with a requests-per-window limit of its own (see the module docstring)."""

    def __init__(self, *, rpm: int, window: float, announce: bool = False) -> None:
        super().__init__()
        self.rpm, self.window, self.announce = rpm, window, announce
        self._recent: deque[float] = deque()
        self.accepted: list[float] = []
        self.refused = 0
        self.refused_at: list[float] = []

    def respond(self, request: Recorded) -> Reply:
        if request.path != CHAT_PATH or request.method != "POST":
            return super().respond(request)
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] <= now - self.window:
                self._recent.popleft()
            if len(self._recent) >= self.rpm:
                self.refused += 1
                self.refused_at.append(now)
                first_room = self._recent[0] + self.window - now
                return Reply(429, body=error_body(429, "Rate limit reached for requests"),
                             retry_after=str(max(1, math.ceil(first_room))),
                             headers=self._headers(0, self._recent[-1] + self.window - now))
            self._recent.append(now)
            self.accepted.append(now)
            left = self.rpm - len(self._recent)
            reset = self.window  # this request, the newest, leaves the window last
        answer = super().respond(request)
        return replace(answer, headers={**answer.headers, **self._headers(left, reset)})

    def _headers(self, left: int, reset: float) -> dict[str, str]:
        if not self.announce:
            return {}
        return {"x-ratelimit-limit-requests": str(self.rpm), "x-ratelimit-remaining-requests": str(left),
                "x-ratelimit-reset-requests": openai_duration(reset)}

    def max_in_window(self, since: float = 0.0) -> int:
        """The most requests accepted in any `window` seconds (from `since` on)."""
        times = sorted(t for t in self.accepted if t >= since)
        return max((bisect.bisect_left(times, t + self.window) - i for i, t in enumerate(times)), default=0)

    def reset(self) -> None:
        with self._lock:
            self._recent.clear()
            self.accepted.clear()
            self.refused = 0
            self.refused_at.clear()
        super().reset()
