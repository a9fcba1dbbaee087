"""Request bodies of the gateway's routes, as strict pydantic models.

They validate every request (unknown fields and wrong types are refused, as the real APIs do)
and their JSON schemas make the gateway's OpenAPI document (`server.openapi`). Fields the real
APIs have but the gateway does not implement are accepted only at their neutral value
(`api_openai.NEUTRAL`); vLLM/SGLang's usual extensions `top_k`, `min_p` and `chat_template_kwargs`
are accepted on the OpenAI routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

MAX_N = 16  # choices per request (each is one engine request and one recorded sample)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ============================================================================ OpenAI
class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: str | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(_Strict):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCallParam(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(_Strict):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None  # DeepSeek/vLLM convention; what the gateway returns
    reasoning: str | None = None
    audio: dict[str, Any] | None = None
    function_call: FunctionCall | None = None
    annotations: list[dict[str, Any]] | None = None  # as the SDK's message objects carry them back


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Strict):
    role: Literal["function"]
    content: str | None = None
    name: str


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _Sampling(_Strict):
    model: str
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=MAX_N)
    temperature: FiniteFloat | None = Field(None, ge=0, le=2)
    top_p: FiniteFloat | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    frequency_penalty: FiniteFloat | None = Field(None, ge=-2, le=2)
    presence_penalty: FiniteFloat | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, FiniteFloat] | None = None
    top_k: int | None = Field(None, ge=-1)  # extension (vLLM/SGLang): -1 or 0 = all
    min_p: FiniteFloat | None = Field(None, ge=0, le=1)  # extension


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    modalities: list[str] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # extension: passed to the chat template


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


# ============================================================================ Anthropic
class CacheControl(_Strict):
    type: Literal["ephemeral"]
    ttl: str | None = None


class ATextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class AImageBlock(_Strict):
    type: Literal["image"]
    source: dict[str, Any]
    cache_control: CacheControl | None = None


class ADocumentBlock(_Strict):
    type: Literal["document"]
    source: dict[str, Any]
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class AToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: dict[str, Any] | None = None  # the SDK's ToolUseBlock carries these back (None for client tools)
    toolset_name: str | None = None


ToolResultPart = Annotated[ATextBlock | AImageBlock, Field(discriminator="type")]


class AToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ToolResultPart] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None
    toolset_name: str | None = None


class AThinkingBlock(_Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class ARedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


ABlock = Annotated[
    ATextBlock
    | AImageBlock
    | ADocumentBlock
    | AToolUseBlock
    | AToolResultBlock
    | AThinkingBlock
    | ARedactedThinkingBlock,
    Field(discriminator="type"),
]


class AMessageParam(_Strict):
    role: Literal["user", "assistant", "system"]
    content: str | list[ABlock]


class ATool(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None
    defer_loading: bool | None = None
    eager_input_streaming: bool | None = None
    input_examples: list[dict[str, Any]] | None = None
    allowed_callers: list[str] | None = None


class AToolChoiceAuto(_Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class AToolChoiceAny(_Strict):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class AToolChoiceTool(_Strict):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class AToolChoiceNone(_Strict):
    type: Literal["none"]


AToolChoice = Annotated[
    AToolChoiceAuto | AToolChoiceAny | AToolChoiceTool | AToolChoiceNone, Field(discriminator="type")
]


class AThinkingEnabled(_Strict):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1024)
    display: Literal["summarized", "omitted"] | None = None


class AThinkingAdaptive(_Strict):
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


class AThinkingBetweenTools(_Strict):
    type: Literal["between_tools"]


class AThinkingDisabled(_Strict):
    type: Literal["disabled"]


AThinking = Annotated[
    AThinkingEnabled | AThinkingAdaptive | AThinkingBetweenTools | AThinkingDisabled,
    Field(discriminator="type"),
]


class AOutputConfig(_Strict):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: dict[str, Any] | None = None


class AMetadata(_Strict):
    user_id: str | None = None


class _AConversation(_Strict):
    model: str
    messages: list[AMessageParam] = Field(min_length=1)
    system: str | list[ATextBlock] | None = None
    tools: list[ATool] | None = None
    tool_choice: AToolChoice | None = None
    thinking: AThinking | None = None


class MessagesRequest(_AConversation):
    max_tokens: int = Field(ge=1)  # the real API takes 0 to pre-warm its prompt cache; not supported here
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: FiniteFloat | None = Field(None, ge=0, le=1)  # older API fields (the SDK: extra_body)
    top_p: FiniteFloat | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: AMetadata | None = None
    service_tier: str | None = None
    cache_control: CacheControl | None = None
    container: dict[str, Any] | str | None = None
    diagnostics: dict[str, Any] | None = None
    inference_geo: str | None = None
    output_config: AOutputConfig | None = None
    speed: Literal["standard", "fast"] | None = None


class CountTokensRequest(_AConversation):
    pass


# ============================================================================ sessions
class CreateSession(_Strict):
    task_id: str = Field(min_length=1, max_length=512)
    session_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    metadata: dict[str, Any] | None = None


class SetReward(_Strict):
    reward: FiniteFloat
    step_rewards: dict[str, list[FiniteFloat]] | None = None
    metrics: dict[str, FiniteFloat] | None = None


class FinishSession(_Strict):
    pass
