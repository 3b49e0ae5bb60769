"""The one exception of the server: an answer with a 4xx status, and the integer query parser."""

from __future__ import annotations


class HTTPError(Exception):
    """An answer with a 4xx status; ``message`` is shown to the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def parse_int(value: str | None, name: str, lo: int, hi: int) -> int:
    if value is None or value == "":
        raise HTTPError(400, f"pass {name}= (an integer)")
    if len(value) > 12 or not value.isascii() or not value.lstrip("-").isdigit():
        raise HTTPError(400, f"{name} must be an integer, not {value[:20]!r}")
    number = int(value)
    if not lo <= number <= hi:
        raise HTTPError(400, f"{name} must be between {lo} and {hi}, not {number}")
    return number



__all__ = ["HTTPError", "parse_int"]
