"""`GatewayConfig`: every knob of the gateway, as a plain dataclass (registered in Hydra's ConfigStore
as `gateway` by the launch driver)."""

from __future__ import annotations

from dataclasses import dataclass, field

from forge.ground.net import is_loopback

CHAT_TEMPLATES = ("auto", "native", "hermes")
TOOL_PARSERS = ("hermes", "none")


@dataclass
class GatewayConfig:
    """Configuration of the gateway.

    engine_urls: the inference engines (SGLang protocol) the gateway routes to, e.g.
    ["http://10.0.0.5:30000"]. model: where the tokenizer and chat template come from (a
    `forge.ground.models` name such as "tiny" / "smollm2_135m", or a local directory); `tokenizer`
    overrides it. The gateway serves the model under `served_model_name` (default: the model
    directory's name) and the `model_aliases` ("default" by default); any other model name is
    refused with 404.

    context_length: the model's context in tokens (None: asked from the first engine's
    /get_model_info, else the model config's max_position_embeddings). A prompt plus max_tokens
    beyond it is refused (400). default_max_tokens: for chat/messages requests that give none
    (None: whatever room the context leaves).

    chat_template: "auto" (the tokenizer's template; the Hermes/Qwen fallback when tools are in
    play and the tokenizer's template cannot render them), "native", "hermes", or a path to a
    Jinja file. reasoning_parser: split `<think>…</think>` into reasoning. tool_parser: "hermes"
    (`<tool_call>{json}</tool_call>`) or "none". sanitize_control_tokens: control tokens typed in
    messages or tool results are encoded as text, never as the model's own markers.

    api_keys: accepted keys (Authorization: Bearer … or x-api-key). Required (non-empty) when
    `host` is not a loopback address. max_concurrent_requests: model calls in flight before new
    ones get 429 with Retry-After. request_timeout_s: one model call's limit (504 after it).
    """

    engine_urls: list[str] = field(default_factory=list)
    model: str = "tiny"
    tokenizer: str | None = None
    served_model_name: str | None = None
    model_aliases: list[str] = field(default_factory=lambda: ["default"])
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    api_keys: list[str] = field(default_factory=list)
    context_length: int | None = None
    default_max_tokens: int | None = None
    max_concurrent_requests: int = 256
    retry_after_s: int = 1
    request_timeout_s: float = 600.0
    chat_template: str = "auto"
    reasoning_parser: bool = True
    tool_parser: str = "hermes"
    sanitize_control_tokens: bool = True
    session_idle_timeout_s: float = (
        3600.0  # sessions unused this long are forgotten (samples stay in the pool)
    )
    ledger_max_anchors: int = 8  # token states kept per session to extend from (newest first)
    engine_retry_after_s: float = 2.0  # an engine that failed is skipped this long
    max_request_bytes: int = 64 << 20

    def validate(self) -> GatewayConfig:
        """Raise ValueError naming the bad field; returns self."""
        if self.chat_template not in CHAT_TEMPLATES and not self.chat_template.endswith((".jinja", ".j2")):
            raise ValueError(
                f"gateway.chat_template={self.chat_template!r}: expected one of {CHAT_TEMPLATES} or a .jinja path"
            )
        if self.tool_parser not in TOOL_PARSERS:
            raise ValueError(f"gateway.tool_parser={self.tool_parser!r}: expected one of {TOOL_PARSERS}")
        if self.max_concurrent_requests < 1:
            raise ValueError("gateway.max_concurrent_requests must be ≥ 1")
        if self.request_timeout_s <= 0:
            raise ValueError("gateway.request_timeout_s must be > 0")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError("gateway.context_length must be ≥ 2")
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError("gateway.default_max_tokens must be ≥ 1")
        if not is_loopback(self.host) and not self.api_keys:
            raise ValueError(
                f"gateway.host={self.host!r} is not a loopback address: set gateway.api_keys "
                "(clients then send Authorization: Bearer KEY or x-api-key: KEY)"
            )
        return self
