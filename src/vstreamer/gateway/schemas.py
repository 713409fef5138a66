"""HTTP bodies of the OpenAI-compatible API (requests strict, responses plain dicts built in one place)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)


def _storable(value: str) -> str:
    """Text the store and the LLM server can take: no NUL character (PostgreSQL refuses it) and no lone surrogate
    (not encodable as UTF-8; Python's JSON parser lets ``"\\ud800"`` through)."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (it has a lone surrogate)") from None
    return value


def _storable_input(value: object) -> object:
    """:func:`_storable` before a length is checked: a length-constrained string refuses a lone surrogate first, with
    an error that does not say what is wrong ("unable to parse raw data as a unicode string")."""
    return _storable(value) if isinstance(value, str) else value


Text = Annotated[str, AfterValidator(_storable)]
# Lengths go in the string's own schema (StringConstraints): a Field's max_length on an annotated or optional str
# is checked as a sequence's, and its error counted "items", not characters.
StopText = Annotated[str, StringConstraints(min_length=1, max_length=200), BeforeValidator(_storable_input)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200), BeforeValidator(_storable_input)]
UserText = Annotated[str, StringConstraints(max_length=128), BeforeValidator(_storable_input)]
NameText = Annotated[str, StringConstraints(max_length=64), BeforeValidator(_storable_input)]
PlatformName = Annotated[str, StringConstraints(max_length=32), BeforeValidator(_storable_input)]
"""A live platform's name in a query (``youtube``, ``api``)."""


def _not_a_bool(value: object) -> object:
    """A number that is not ``true`` or ``false``: pydantic reads ``true`` as 1 where OpenAI refuses it."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _null_is(default: object) -> BeforeValidator:
    """``null`` read as the parameter's default, as OpenAI reads it (``"stream": null`` is ``false``)."""
    return BeforeValidator(lambda value: default if value is None else value)


def _no_op(*values: object, unsupported: str) -> AfterValidator:
    """A parameter the gateway does not act on: accepted when it asks for nothing (``null``, or one of ``values``:
    OpenAI's default, compared with its JSON type, so ``0`` is not ``false``); otherwise refused with
    ``unsupported``, since a client that relies on it must hear that it is not done."""

    def check(value: object) -> object:
        if value is None or any(type(value) is type(v) and value == v for v in values):
            return value
        raise ValueError(unsupported)

    return AfterValidator(check)


Whole = Annotated[int, BeforeValidator(_not_a_bool)]
Real = Annotated[float, BeforeValidator(_not_a_bool)]
_NO_TOOLS = "tool calls are not supported: the persona only talks"
_NO_LOGPROBS = "log probabilities are not supported"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        # Said first: an image part otherwise failed as "should be a valid string" (the content's other member).
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind != "text":
            raise ValueError(f"only text content parts are supported, not {kind[:40]!r}")
        return data


class RequestMessage(BaseModel):
    """One OpenAI chat message; content may be a string or text parts."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None
    name: NameText | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)  # as vLLM joins them
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. ``model`` names the persona."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName
    messages: Annotated[list[RequestMessage], Field(min_length=1, max_length=1000)]
    stream: Annotated[StrictBool, _null_is(False)] = False
    stream_options: StreamOptions | None = None
    """Only with ``stream: true``, as OpenAI's."""
    temperature: Real | None = Field(None, ge=0, le=2)
    top_p: Real | None = Field(None, gt=0, le=1)
    max_tokens: Whole | None = Field(None, ge=1, le=32768)
    """The longest reply; after validation, ``max_completion_tokens`` whenever that is sent (OpenAI's newer name)."""
    max_completion_tokens: Whole | None = Field(None, ge=1, le=32768)
    seed: Whole | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: Annotated[Whole, _null_is(1)] = 1
    user: UserText | None = None
    """The end user: without an ``X-Session-Id`` header, their session with the persona under this API key (see
    :func:`vstreamer.gateway.chat.user_session_id`)."""
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    """Up to 4 strings the reply ends before (as OpenAI's)."""
    presence_penalty: Real | None = Field(None, ge=-2, le=2)
    frequency_penalty: Real | None = Field(None, ge=-2, le=2)
    metadata: dict[Text, Text] | None = None
    # What OpenAI clients send as no-ops (their defaults, or null): accepted; any real use of them is refused.
    store: StrictBool | None = None
    """Whether OpenAI keeps the completion; the gateway keeps every session's turns, whatever it says."""
    parallel_tool_calls: StrictBool | None = None
    logprobs: Annotated[Any, _no_op(False, unsupported=_NO_LOGPROBS)] = None
    top_logprobs: Annotated[Any, _no_op(0, unsupported=_NO_LOGPROBS)] = None
    tools: Annotated[Any, _no_op([], unsupported=_NO_TOOLS)] = None
    tool_choice: Annotated[Any, _no_op("none", unsupported=_NO_TOOLS)] = None
    functions: Annotated[Any, _no_op([], unsupported=_NO_TOOLS)] = None
    function_call: Annotated[Any, _no_op("none", unsupported=_NO_TOOLS)] = None
    response_format: Annotated[Any, _no_op({"type": "text"}, unsupported="only {'type': 'text'} is supported: "
                                            "the persona answers in its own words, not in JSON")] = None  # fmt: skip
    logit_bias: Annotated[Any, _no_op({}, unsupported="logit_bias is not supported")] = None
    modalities: Annotated[Any, _no_op(["text"], unsupported="only text output is supported")] = None

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[RequestMessage]) -> list[RequestMessage]:
        if messages[-1].role != "user" or not messages[-1].text.strip():
            raise ValueError("the last message must be a non-empty user message")
        return messages

    @field_validator("stream_options")
    @classmethod
    def _streamed(cls, options: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if options is not None and not info.data.get("stream", True):  # a refused stream is told, not this
            raise ValueError("stream_options is only allowed with stream: true")
        return options

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only one choice per request is supported (n: 1)")
        return n

    @model_validator(mode="after")
    def _newer_max_tokens(self) -> ChatCompletionRequest:
        """``max_completion_tokens`` wins over ``max_tokens`` (OpenAI's deprecated name), and is what ``max_tokens``
        says from here on, so that one field is read."""
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error schema."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
