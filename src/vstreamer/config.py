"""Settings: one pydantic-settings class, built by entry points (never at import time).

Precedence, highest first: explicit overrides (CLI flags) > ``VSTREAMER_*`` environment variables >
TOML file (``--config`` or ``VSTREAMER_CONFIG``) > defaults.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from vstreamer.errors import ConfigError
from vstreamer.url_auth import header_key

BackendName = Literal["local", "openai", "fake"]
LocalModelName = Literal["smollm2", "qwen2.5-0.5b"]

DEFAULT_UI_PORT = 8310
DEFAULT_GATEWAY_PORT = 8320
VLLM_DEFAULT_PORT = 8000
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "your-api-key", "your_api_key", "xxx", "sk-xxx", "<api-key>"}


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps a server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vstreamer"


def usable_key(value: SecretStr | None) -> SecretStr | None:
    """An API key as an HTTP header can carry it, the same for every user of it (the chat, the gateway, vllm-wait,
    the vLLM launch): surrounding blanks removed, since a key read from a file often ends with a line break; any other
    character outside visible ASCII refused, since inside a header it is illegal or splits it (injection)."""
    if value is None:
        return None
    key = header_key(value.get_secret_value())
    if key is None:
        raise ValueError(
            "the key has characters other than visible ASCII (a line break or a space inside it?)"
        )
    return SecretStr(key)


class VLLMSettings(BaseModel):
    """How ``vstreamer vllm-command`` launches the production vLLM server."""

    model_config = ConfigDict(extra="forbid")

    model: str = "Qwen/Qwen2.5-7B-Instruct"
    served_model_name: str = "qwen2.5-7b-instruct"
    host: str = "0.0.0.0"
    port: int = Field(VLLM_DEFAULT_PORT, ge=1, le=65535)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32", "half"] = "auto"
    max_model_len: int = Field(32768, ge=256)
    max_num_seqs: int = Field(64, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=256)
    quantization: Literal["none", "awq", "gptq"] = "none"
    enable_tool_calling: bool = True
    tool_call_parser: str = "hermes"
    api_key: SecretStr | None = None
    extra_args: list[str] = Field(default_factory=list)
    """Further ``vllm serve`` flags, appended as given (``["--enable-prefix-caching"]``); a flag these settings
    already set is refused (say ``port = 8100``, not ``extra_args = ["--port", "8100"]``)."""

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        return usable_key(value)


def _expanded(path: Path) -> Path:
    """``path`` with a leading ``~`` or ``~user`` made the home folder (a user that does not exist: a clear error)."""
    try:
        return path.expanduser()
    except RuntimeError:  # "~nosuchuser/..."
        raise ValueError(f"{path}: no home folder for {path.parts[0]!r}") from None


class Settings(BaseSettings):
    """All configuration of vstreamer."""

    model_config = SettingsConfigDict(
        env_prefix="VSTREAMER_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    # --- LLM backend
    backend: BackendName = "local"
    base_url: str = f"http://127.0.0.1:{VLLM_DEFAULT_PORT}/v1"
    api_key: SecretStr = SecretStr("EMPTY")
    model: str = "qwen2.5-7b-instruct"
    local_model: LocalModelName = "smollm2"
    model_path: Path | None = None
    n_threads: int | None = Field(None, ge=1)
    fake_delay: float = Field(0.0, ge=0, le=10)
    """Seconds between pieces of the ``fake`` backend (demos and tests)."""
    prompt_roles: Literal["auto", "system", "strict"] = "auto"
    """How a prompt's roles reach the model: ``system`` as built (the persona and the card's post-history note as
    system messages, the greeting as the first assistant turn); ``strict`` arranged for chat templates that take
    only user and assistant turns, alternating from a user one (Mistral, Llama 2, Gemma): the system texts join the
    user messages; ``auto`` arranged only for a model whose template refuses the prompt as built (the embedded
    backend tries the template when it loads the model, a server's backend once the server refuses a request)."""

    # --- generation and context
    context_window: int = Field(4096, ge=256)
    max_tokens: int = Field(384, ge=1)
    reserve_tokens: int = Field(32, ge=0)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)

    # --- resilience
    connect_timeout: float = Field(5.0, gt=0)
    first_token_timeout: float = Field(60.0, gt=0)
    stall_timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    stream_batch_ms: float = Field(40.0, ge=0, le=1000)
    """Under load, an LLM server's reply after its first text is read at most this often (what came meanwhile goes on
    as one piece): each read costs the gateway its parse, moderation, persona watch and write whatever it carries,
    and a GPU sends a token every 10-20 ms per stream. 0: every token as it comes."""
    stream_batch_after: int = Field(16, ge=0)
    """The load from which ``stream_batch_ms`` applies: requests in flight to the LLM server (below it, every token
    goes on as it comes)."""
    fallback: Literal["none", "local"] = "none"
    """Backend to use while the primary one is down (``local``: the embedded model)."""
    circuit_threshold: int = Field(3, ge=1)
    """Consecutive upstream failures that open the circuit breaker."""
    circuit_reset_s: float = Field(30.0, gt=0)

    # --- safety
    moderation: bool = True
    """Moderate viewer input and the streamed output (curated lexicon, PII, injection and leak guards)."""
    lexicon_dirs: list[Path] = Field(default_factory=list)
    """Extra lexicon folders (one term per line, a file per category)."""
    audit_log: Path | None = None
    """JSON-lines file for moderation decisions (default: the log)."""

    # --- memory
    memory: bool = True
    """Rolling summaries of what left the context window and long-term facts about each viewer."""
    memory_summary_tokens: int = Field(256, ge=16)
    """Longest running summary in the prompt (at most a quarter of the prompt budget)."""
    memory_facts_tokens: int = Field(128, ge=0)
    """Prompt tokens for the facts remembered about the viewer (at most an eighth of the prompt budget)."""
    memory_summary_batch: int = Field(12, ge=1)
    """Turns out of the context window before they are folded into the summary."""
    memory_facts_per_viewer: int = Field(200, ge=1)
    """Newest facts kept per viewer."""
    memory_facts: bool = True
    """Extract facts viewers state about themselves (one small LLM request per such message)."""
    drift_repair: bool = True
    """Catch replies that break character and regenerate them once, else answer with an in-character line."""
    embeddings_url: str | None = None
    """OpenAI-compatible base URL (``.../v1``) whose ``/embeddings`` adds semantic recall of facts."""
    embeddings_model: str = "text-embedding"
    embeddings_api_key: SecretStr = SecretStr("EMPTY")

    # --- product
    persona: str = "xiaoxing"
    user_name: str = "观众"
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    """``sqlite:///path.db`` or ``postgresql://user:pass@host/db``; default: SQLite file in data_dir."""
    user_commit: Literal["overlap", "before"] = "overlap"
    """When a chat message is committed: ``overlap`` stores it while the prompt is built and the model is called
    (the reply's first text waits for the commit; a failed commit fails the reply), ``before`` stores it first."""
    session_cache: int | None = Field(None, ge=0)
    """Live sessions kept in memory between turns. Default: 1000 on SQLite, 0 (off) on PostgreSQL, where several
    instances may share the database; turn it on there only with sticky sessions (one instance per session)."""
    ui_port: int = Field(DEFAULT_UI_PORT, ge=1, le=65535)
    ui_host: str = "127.0.0.1"
    ui_auth: Literal["none", "password"] = "none"
    """``password``: users log in (``ui_users``) and each sees only their own conversations."""
    ui_users: dict[str, SecretStr] = Field(default_factory=dict)
    """User name -> password for the web chat, e.g. ``VSTREAMER_UI_USERS='{"alice": "s3cret"}'``."""
    gateway_port: int = Field(DEFAULT_GATEWAY_PORT, ge=1, le=65535)
    gateway_host: str = "127.0.0.1"
    gateway_workers: int = Field(1, ge=1, le=64)
    """Processes serving the gateway's one port (``serve --workers``): one uses one core. Several share the SQLite
    file and keep their session caches true between them; they need an LLM server (not the embedded model)."""
    auth: bool = True
    """Require API keys on the gateway (``vstreamer keys create``); off only for local use."""
    cors_origins: list[str] = Field(default_factory=list)
    max_input_chars: int = Field(4000, ge=1)
    """Longest accepted user message."""
    sse_keepalive_s: float = Field(15.0, gt=0)

    vllm: VLLMSettings = Field(default_factory=VLLMSettings)

    _toml_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        toml_file = _CONFIG_FILE_HINT.get("path")
        if toml_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {value!r}"
            )
        if parsed.query or parsed.fragment or value.endswith(("?", "#")):
            raise ValueError(
                "base_url may not have a query or fragment (a request path is added to it): use the server's "
                "base address, such as http://127.0.0.1:8000/v1"
            )
        return value.rstrip("/")

    @field_validator("data_dir", "model_path", "audit_log", "lexicon_dirs")
    @classmethod
    def _expand_home(cls, value: Path | list[Path] | None) -> Path | list[Path] | None:
        """``~`` is the home folder, as in a shell: a TOML value or a quoted variable keeps it literal, and
        ``data_dir = "~/x"`` made a folder named ``~`` in the working directory."""
        if isinstance(value, list):
            return [_expanded(path) for path in value]
        return _expanded(value) if value is not None else None

    @field_validator("audit_log")
    @classmethod
    def _check_audit_log(cls, value: Path | None) -> Path | None:
        """Refused at start: a file that cannot be written failed every message of a conversation instead."""
        if value is None:
            return None
        path = value.expanduser()
        if path.is_dir():
            raise ValueError(
                f"{path} is a folder; audit_log is the file moderation decisions are appended to"
            )
        # Its folder is made at start if need be (one under data_dir, which the store makes, is usual): the nearest
        # folder that exists must let this user make it.
        nearest = path.parent
        while not nearest.exists() and nearest != nearest.parent:
            nearest = nearest.parent
        if not nearest.is_dir():
            raise ValueError(
                f"{nearest} is not a folder, so {path} cannot be made (choose another audit_log)"
            )
        if not os.access(path if path.exists() else nearest, os.W_OK):
            raise ValueError(f"{path} cannot be written by this user")
        return path

    @field_validator("api_key", "embeddings_api_key")
    @classmethod
    def _check_secret(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        key = usable_key(value)
        assert key is not None
        if info.field_name == "api_key" and key.get_secret_value().lower() in _PLACEHOLDER_SECRETS:
            raise ValueError("api_key is a placeholder; set a real key (or EMPTY for a local server)")
        return key

    @model_validator(mode="after")
    def _check_budget_and_ports(self) -> Settings:
        if self.context_window < self.max_tokens + self.reserve_tokens + 64:
            raise ValueError(
                f"context_window ({self.context_window}) must exceed max_tokens ({self.max_tokens}) + "
                f"reserve_tokens ({self.reserve_tokens}) by at least 64 tokens for the prompt"
            )
        if self.ui_port == self.vllm.port:
            raise ValueError(f"ui_port {self.ui_port} collides with the vLLM server port; choose another")
        if self.gateway_port in (self.vllm.port, self.ui_port):
            raise ValueError(f"gateway_port {self.gateway_port} collides with the UI or vLLM port")
        if self.model_path is not None and not self.model_path.is_file():
            raise ValueError(f"model_path {self.model_path} is not a file")
        return self

    @property
    def personas_dir(self) -> Path:
        return self.data_dir / "personas"

    def updated(self, **updates: Any) -> Settings:
        """These settings with ``updates`` (a command's own flags), validated as a loaded value is (``model_copy``
        checks nothing: ``--port 99999`` bound port 34463).

        Raises:
            ConfigError: as :meth:`load`.
        """
        try:
            return type(self).model_validate(self.model_dump() | updates)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, a TOML file, the environment and explicit overrides.

        Raises:
            ConfigError: with every validation problem listed in one readable message.
        """
        # An empty VSTREAMER_CONFIG= (or --config "") means no file, as an unset one does, not a file named "".
        named = config_file or os.environ.get("VSTREAMER_CONFIG") or None
        path = Path(named).expanduser() if named is not None else None
        if path is not None and not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        clean = {k: v for k, v in overrides.items() if v is not None}
        _CONFIG_FILE_HINT["path"] = path
        try:
            return cls(**clean)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None
        except SettingsError as exc:  # e.g. an environment variable that should hold JSON does not
            raise ConfigError(f"invalid configuration: {_settings_error(exc)}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:  # the file itself
            raise ConfigError(f"cannot read the config file {path}: {exc}") from None
        finally:
            _CONFIG_FILE_HINT["path"] = None


# pydantic-settings builds sources from a classmethod; this carries the file path for one load() call.
_CONFIG_FILE_HINT: dict[str, Path | None] = {"path": None}


def format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        # pydantic puts "Value error, " before a validator's own message: noise to the reader
        lines.append(f"  - {where}: {str(err['msg']).removeprefix('Value error, ')}")
    return "\n".join(lines)


_JSON_SETTINGS: dict[str, tuple[str, str]] = {
    "lexicon_dirs": (
        "VSTREAMER_LEXICON_DIRS",
        """a JSON list, such as VSTREAMER_LEXICON_DIRS='["/srv/lexicons"]'""",
    ),
    "cors_origins": (
        "VSTREAMER_CORS_ORIGINS",
        """a JSON list, such as VSTREAMER_CORS_ORIGINS='["https://example.org"]'""",
    ),
    "ui_users": ("VSTREAMER_UI_USERS", """a JSON object, such as VSTREAMER_UI_USERS='{"alice": "s3cret"}'"""),
    "vllm": (
        "VSTREAMER_VLLM or a VSTREAMER_VLLM__* variable",
        """JSON, such as VSTREAMER_VLLM='{"port": 8100}' or """
        """VSTREAMER_VLLM__EXTRA_ARGS='["--enable-prefix-caching"]'""",
    ),
}
"""Setting -> (its variables, what they hold) for the settings that are lists or objects: their environment
variables hold JSON (pydantic-settings parses them so)."""
_UNPARSED = re.compile(r'error parsing value for field "(?P<field>\w+)" from source "EnvSettingsSource"')


def _settings_error(exc: SettingsError) -> str:
    """pydantic-settings' message, made to say what the environment variable should hold: it said only "error
    parsing value for field "lexicon_dirs" from source "EnvSettingsSource"" for ``VSTREAMER_LEXICON_DIRS=/tmp``."""
    matched = _UNPARSED.fullmatch(str(exc))
    if matched is None:
        return str(exc)
    field = matched["field"]
    variables, expected = _JSON_SETTINGS.get(field, (f"VSTREAMER_{field.upper()}", "JSON"))
    detail = f" (not JSON: {exc.__cause__})" if exc.__cause__ is not None else ""
    return f"{field}: {variables} must hold {expected}{detail}"  # the setting's name, as a check's message gives it
