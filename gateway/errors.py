"""Errors as each API writes them.

OpenAI: `{"error": {"message", "type", "param", "code"}}`. Anthropic: `{"type": "error",
"error": {"type", "message"}}`. The session API uses the OpenAI shape. Status codes: 400 bad
input, 401 missing/wrong key, 404 unknown model/session/route, 409 a session whose task is no
longer running, 413 body too large, 429 too many requests (with Retry-After), 503 no engine
reachable, 504 the request timed out.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answer: status, message and (OpenAI) param / code; optional extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self, style: str) -> dict[str, Any]:
        if style == "anthropic":
            kind = ANTHROPIC_TYPES.get(
                self.status, "invalid_request_error" if self.status < 500 else "api_error"
            )
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        kind = OPENAI_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _loc(loc: tuple[Any, ...]) -> str:
    """A pydantic location as a path: ('messages', 0, 'user', 'content', 'str') → messages[0].content.

    Pydantic adds the member of a union it tried (a discriminator tag, a type name such as 'str' or
    'list[...]', a model class name); those are not fields and are dropped."""
    out = ""
    prev: list[Any] = []  # the fields and indexes kept so far, "<tag>" where a tag was dropped
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part in _TYPE_NAMES or part[:1].isupper()):
            continue
        elif _is_tag(part, prev):
            prev.append("<tag>")
            continue
        else:
            out += ("." if out else "") + str(part)
        prev.append(part)
    return out


_UNION_LISTS = {"messages", "content"}  # lists of discriminated unions
_UNION_FIELDS = {"tool_choice", "thinking"}  # discriminated unions
_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "constrained-str"}
_LIST_TAGS = {
    *("system", "developer", "user", "assistant", "tool", "function"),  # message roles
    *("text", "image_url", "input_audio", "file", "refusal", "image", "document"),  # content blocks
    *("tool_use", "tool_result", "thinking", "redacted_thinking"),
}
_FIELD_TAGS = {"auto", "any", "tool", "none", "enabled", "disabled", "adaptive", "between_tools"}


def _is_tag(part: Any, prev: list[Any]) -> bool:
    if len(prev) >= 2 and isinstance(prev[-1], int) and prev[-2] in _UNION_LISTS:
        return part in _LIST_TAGS
    return bool(prev) and prev[-1] in _UNION_FIELDS and part in _FIELD_TAGS


def validation_error(exc: ValidationError, style: str) -> APIError:
    """The first problem of a pydantic ValidationError, phrased as the API would."""
    errors = exc.errors(include_url=False)
    # an unknown field is the most useful thing to name; else the most specific (deepest) error
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    err = extra[0] if extra else max(errors, key=lambda e: len(e["loc"]))
    kind, loc, msg = err["type"], _loc(tuple(err["loc"])), err["msg"]
    if kind == "json_invalid":
        if style == "anthropic":
            return APIError(400, f"There was an error parsing the body of your request: {msg}")
        return APIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The API expects a JSON payload, but what was sent was not "
            f"valid JSON. {msg})",
        )
    if kind in ("model_type", "model_attributes_type") and not loc:
        return APIError(400, "The request body must be a JSON object.")
    if style == "anthropic":
        return APIError(400, f"{loc}: {msg}" if loc else msg)
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {loc}", param=loc)
    if kind == "missing":
        return APIError(
            400, f"Missing required parameter: '{loc}'.", param=loc, code="missing_required_parameter"
        )
    if kind.startswith("union_tag"):
        return APIError(400, f"Invalid value for '{loc}': {msg}", param=loc, code="invalid_value")
    return APIError(400, f"Invalid value for '{loc}': {msg}", param=loc, code="invalid_value")
