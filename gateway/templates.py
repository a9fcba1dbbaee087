"""Rendering conversations with the tokenizer's chat template, and encoding the text to token ids.

Which template: the tokenizer's own (`native`), or, when a conversation uses tools and the
tokenizer's template cannot render them (it never mentions `tools`, e.g. SmolLM2's), the
Hermes/Qwen-style fallback below (`HERMES_TEMPLATE`, ChatML framing as in Qwen2.5's template):

- tools go into the system turn as JSON lines inside `<tools></tools>`, with the instruction to
  answer `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`;
- assistant tool calls are written in exactly that form (the parser reads it back);
- consecutive tool results are one `user` turn of `<tool_response>…</tool_response>` blocks;
- assistant reasoning, when a message carries it, is written as `<think>\\n…\\n</think>\\n\\n`.
It needs the ChatML markers `<|im_start|>` / `<|im_end|>` in the vocabulary; a tokenizer without
them and without a tool-capable template cannot serve tool requests (400).

Control tokens (the tokenizer's special tokens and the added tokens the templates write) that
appear in what clients send — message text, tool results, tool schemas — are encoded as plain
text when `sanitize` is on: only the template itself can open or close a turn. This is done as
in transformers' `sanitize_control_tokens`: such strings are wrapped in private-use markers
before rendering, and the encoder encodes marked pieces without matching added tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from gateway.messages import Message, template_dict

MARK_START, MARK_END = "\ue000", "\ue001"

HERMES_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments ' }}
{{- 'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, ' }}
{{- '\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- if message.reasoning_content %}{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}{%- endif %}
{{- message.content }}
{%- for tool_call in message.tool_calls or [] %}
{%- if loop.first and not message.content %}{%- else %}{{- '\\n' }}{%- endif %}
{{- '<tool_call>\\n{\"name\": ' + (tool_call.function.name | tojson) + ', \"arguments\": ' }}
{{- tool_call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


class TemplateError(ValueError):
    """The chat template refused the conversation (its own `raise_exception`, or a bad shape)."""


def _compile(source: str) -> Any:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(source)


def _mark(obj: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(obj, str):
        if MARK_START in obj or MARK_END in obj:
            obj = obj.replace(MARK_START, "").replace(MARK_END, "")
        if pattern.search(obj) is None:  # the common case: nothing to mark, no copy
            return obj
        return pattern.sub(lambda m: MARK_START + m.group(0) + MARK_END, obj)
    if isinstance(obj, dict):
        return {k: _mark(v, pattern) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_mark(v, pattern) for v in obj]
    return obj


class ChatRenderer:
    """Chat template + tokenizer: `render` conversations to text, `encode` text to ids."""

    def __init__(self, tokenizer: Any, mode: str = "auto", sanitize: bool = True) -> None:
        self.tokenizer = tokenizer
        self.mode = mode
        self.sanitize = sanitize
        native = getattr(tokenizer, "chat_template", None)
        if isinstance(native, dict):  # named templates: the default one
            native = native.get("default") or next(iter(native.values()), None)
        if mode.endswith((".jinja", ".j2")):
            with open(mode, encoding="utf-8") as fh:
                native = fh.read()
        self.native_source: str | None = native
        self.native_supports_tools = bool(native) and "tools" in native
        vocab = tokenizer.get_vocab()
        self.chatml = "<|im_start|>" in vocab and "<|im_end|>" in vocab
        self._native = _compile(native) if native else None
        self._hermes = _compile(HERMES_TEMPLATE) if self.chatml else None
        self.special_tokens_map = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        self.eos_token: str = tokenizer.eos_token or ""
        self.eos_token_id: int | None = tokenizer.eos_token_id
        self._fast = getattr(tokenizer, "_tokenizer", None)
        self._no_added: Any = None
        sources = (native or "") + (HERMES_TEMPLATE if self.chatml else "")
        controls = sorted(
            {
                t.content
                for t in tokenizer.added_tokens_decoder.values()
                if t.content and not t.content.isspace() and (t.special or t.content in sources)
            },
            key=len,
            reverse=True,
        )
        self.control_tokens = tuple(controls)
        self._control_re = re.compile("|".join(map(re.escape, controls)) or "(?!)")
        self._marked_re = re.compile(f"{MARK_START}(.*?){MARK_END}|[{MARK_START}{MARK_END}]", re.S)

    # ------------------------------------------------------------------ which template
    def template_name(self, conv_tools: bool) -> str:
        if self.mode == "hermes":
            return "hermes"
        if self.mode == "native" or self._native is None:
            return "native" if self._native is not None else "hermes"
        if conv_tools and not self.native_supports_tools:
            return "hermes"
        return "native"

    def uses_tools(self, messages: Iterable[Message], tools: list[dict[str, Any]] | None) -> bool:
        return bool(tools) or any(m.tool_calls or m.role == "tool" for m in messages)

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        messages: list[Message] | tuple[Message, ...],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
        template: str,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        compiled = self._hermes if template == "hermes" else self._native
        if compiled is None:
            raise TemplateError(
                "this model's chat template cannot render tools and its tokenizer has no ChatML markers "
                "for the Hermes fallback template"
                if template == "hermes"
                else "this model's tokenizer has no chat template"
            )
        if not messages:
            raise TemplateError("messages must not be empty")
        dicts: Any = [template_dict(m) for m in messages]
        tools_arg: Any = list(tools) if tools else None
        if self.sanitize:
            dicts = _mark(dicts, self._control_re)
            tools_arg = _mark(tools_arg, self._control_re) if tools_arg else None
        kwargs = {**self.special_tokens_map, **(template_kwargs or {})}
        try:
            return compiled.render(
                messages=dicts,
                tools=tools_arg,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
        except Exception as exc:  # jinja's TemplateError, or TypeError/ValueError from a bad shape
            raise TemplateError(f"the chat template refused the conversation: {exc}") from exc

    # ------------------------------------------------------------------ encoding
    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _encode_as_text(self, text: str) -> list[int]:
        """Encode without matching any added token (special or not): a copy of the fast tokenizer
        with no added tokens. (transformers' split_special_tokens leaves non-special added tokens
        such as `<tool_call>` matched, and flips a flag on the shared Rust tokenizer.)"""
        if self._fast is None:
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)
        if self._no_added is None:
            from tokenizers import Tokenizer

            spec = json.loads(self._fast.to_str())
            spec["added_tokens"] = []
            self._no_added = Tokenizer.from_str(json.dumps(spec))
        return list(self._no_added.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text (marked control tokens as plain text)."""
        if MARK_START not in text and MARK_END not in text:
            return self._encode_plain(text)
        ids: list[int] = []
        pos = 0
        for m in self._marked_re.finditer(text):
            ids += self._encode_plain(text[pos : m.start()])
            if m.group(1):
                ids += self._encode_as_text(m.group(1))
            pos = m.end()
        ids += self._encode_plain(text[pos:])
        return ids

    def encode_raw(self, text: str) -> list[int]:
        """Token ids of text a client sent as a raw prompt (/v1/completions): control tokens in it
        count, as with any completions server."""
        return self._encode_plain(text)

    def starts_with_control(self, text: str) -> bool:
        m = self._control_re.match(text)
        return m is not None

    def control_tail(self, text: str, window: int = 4096) -> str | None:
        """The end of `text` from its last template-written control token on, or None."""
        start = max(0, len(text) - window)
        last = None
        for m in self._control_re.finditer(text, start):
            if m.start() > 0 and text[m.start() - 1] == MARK_START:
                continue  # a marked (client-typed) one is text
            last = m
        return None if last is None else text[last.start() :]

    def continuation_base(self, left: str) -> tuple[str, list[int]] | None:
        """What `encode_after` needs of `left`: its tail from the last control token and the tail's
        ids (None without a control token). Computed once per left text, ahead of the right one."""
        tail = self.control_tail(left)
        return None if tail is None else (tail, self.encode(tail))

    def encode_after(self, base: tuple[str, list[int]] | None, right: str) -> list[int] | None:
        """The ids of `right` as they tokenise after the left text whose `continuation_base` is
        `base`, when the join is stable: encoding (tail of left) + right gives the tail's ids
        followed by these. None when it is not (the caller then renders afresh). Cheap: only the
        tail from the left text's last control token is encoded."""
        if not right:
            return []
        if self.starts_with_control(right):
            return self.encode(right)
        if base is None:
            return None
        tail, ids_tail = base
        ids_all = self.encode(tail + right)
        if ids_all[: len(ids_tail)] != ids_tail:
            return None
        return ids_all[len(ids_tail) :]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text of one token as written in a template (special tokens included)."""
        return self.decode([token_id], skip_special_tokens=False)


def tools_fingerprint(tools: list[dict[str, Any]] | None, template: str, kwargs: dict[str, Any]) -> str:
    """What, besides the messages, decides a rendering: anchors only match requests that agree."""
    return json.dumps([tools or [], template, kwargs], sort_keys=True, ensure_ascii=False, default=str)
