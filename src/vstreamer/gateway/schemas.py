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
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. ``model`` names the persona."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName
    messages: Annotated[list[RequestMessage], Field(min_length=1, max_length=1000)]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: Literal[1] = 1
    user: UserText | None = None
    """Names the session when no ``X-Session-Id`` header is sent (see :func:`vstreamer.gateway.chat.session_id_of`)."""
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    """Up to 4 strings the reply ends before (as OpenAI's)."""
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    metadata: dict[Text, Text] | None = None

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[RequestMessage]) -> list[RequestMessage]:
        if messages[-1].role != "user" or not messages[-1].text.strip():
            raise ValueError("the last message must be a non-empty user message")
        return messages


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error schema."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
