"""The one typed settings object, read from the environment and `.env`.

Everything configurable lives here so that a bad value stops start-up with a message
naming the variable, instead of failing later inside a request.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError
from memory.db import DEFAULT_MAX_OVERFLOW, DEFAULT_POOL_SIZE
from memory.ledger import OperatorLimits
from pipelines.downloads.fetch_policy import parse_allow_list

# An amount the cost ledger stores exactly: six decimal places, under a million.
Dollars = Annotated[Decimal, Field(ge=0, lt=1_000_000, decimal_places=6)]

_SQLITE_PREFIXES = ("sqlite+aiosqlite://", "sqlite://")
_POSTGRES_PREFIXES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


def _env(name: str, *more: str) -> AliasChoices:
    return AliasChoices(name, *more)


class Settings(BaseSettings):
    """Application settings; each field documents its environment variable."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(Path("./data"), validation_alias=_env("ATELIER_DATA_DIR"))
    database_url: str | None = Field(None, validation_alias=_env("ATELIER_DATABASE_URL"))
    # Database connections per process (memory/db.py says why these defaults).
    db_pool_size: Annotated[int, Field(ge=1, le=500)] = Field(
        DEFAULT_POOL_SIZE, validation_alias=_env("ATELIER_DB_POOL_SIZE")
    )
    db_max_overflow: Annotated[int, Field(ge=0, le=500)] = Field(
        DEFAULT_MAX_OVERFLOW, validation_alias=_env("ATELIER_DB_MAX_OVERFLOW")
    )

    # Defaults are live models in pipelines/catalogue/models.toml
    # (gpt-5-mini shuts down 2026-12-11).
    llm_model: str = Field("gpt-6.1-terra", validation_alias=_env("ATELIER_LLM_MODEL"))
    llm_base_url: str | None = Field(None, validation_alias=_env("ATELIER_LLM_BASE_URL"))
    llm_api_key: SecretStr | None = Field(None, validation_alias=_env("ATELIER_LLM_API_KEY"))
    llm_stream: bool = Field(True, validation_alias=_env("ATELIER_LLM_STREAM"))

    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_env("OPENAI_BASE_URL"))
    image_model: str = Field("gpt-image-2", validation_alias=_env("ATELIER_IMAGE_MODEL"))
    request_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        120.0, validation_alias=_env("ATELIER_REQUEST_TIMEOUT")
    )
    max_retries: Annotated[int, Field(ge=0, le=10)] = Field(
        2, validation_alias=_env("ATELIER_MAX_RETRIES")
    )
    # How many image requests each provider gets at once, for the whole process (issue 14):
    # a batch beyond one request's limit (curation, variations, --n) is sent this many at
    # a time, and a 429 pauses all of a provider's requests (pipelines/provider_limits.py).
    # The local backend runs one job per device anyway.
    openai_concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        4, validation_alias=_env("ATELIER_OPENAI_CONCURRENCY")
    )
    replicate_concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        4, validation_alias=_env("ATELIER_REPLICATE_CONCURRENCY")
    )
    local_concurrency: Annotated[int, Field(ge=1, le=8)] = Field(
        1, validation_alias=_env("ATELIER_LOCAL_CONCURRENCY")
    )

    replicate_api_token: SecretStr | None = Field(
        None, validation_alias=_env("REPLICATE_API_TOKEN")
    )
    replicate_base_url: str | None = Field(None, validation_alias=_env("REPLICATE_BASE_URL"))
    replicate_model: str = Field(
        "black-forest-labs/flux-schnell", validation_alias=_env("ATELIER_REPLICATE_MODEL")
    )
    replicate_poll_interval_s: Annotated[float, Field(gt=0, le=60)] = Field(
        1.0, validation_alias=_env("ATELIER_REPLICATE_POLL_INTERVAL")
    )
    replicate_video_model: str = Field(
        "minimax/video-01", validation_alias=_env("ATELIER_REPLICATE_VIDEO_MODEL")
    )

    local_model: str = Field("stabilityai/sd-turbo", validation_alias=_env("ATELIER_LOCAL_MODEL"))
    local_video_model: str = Field(
        "stabilityai/stable-video-diffusion-img2vid-xt",
        validation_alias=_env("ATELIER_LOCAL_VIDEO_MODEL"),
    )
    local_device: str = Field("auto", validation_alias=_env("ATELIER_LOCAL_DEVICE"))
    local_enabled: bool = Field(True, validation_alias=_env("ATELIER_LOCAL_ENABLED"))
    lora_dir: Path | None = Field(None, validation_alias=_env("ATELIER_LORA_DIR"))
    styles_file: Path | None = Field(None, validation_alias=_env("ATELIER_STYLES_FILE"))
    clip_model: str = Field(
        "openai/clip-vit-base-patch32", validation_alias=_env("ATELIER_CLIP_MODEL")
    )
    clip_enabled: bool = Field(True, validation_alias=_env("ATELIER_CLIP_ENABLED"))
    # The gallery's search by likeness (issue 16): each stored image is embedded by the
    # CLIP model above in a background thread. Needs the local extra; off without it.
    gallery_likeness: bool = Field(True, validation_alias=_env("ATELIER_GALLERY_LIKENESS"))
    prices_file: Path | None = Field(None, validation_alias=_env("ATELIER_PRICES_FILE"))
    # The model catalogue (pipelines/catalogue/models.toml) extended by the operator's own file, and
    # the day its shutdown dates are compared with (unset: today, UTC) to preview one.
    models_file: Path | None = Field(None, validation_alias=_env("ATELIER_MODELS_FILE"))
    models_date: date | None = Field(None, validation_alias=_env("ATELIER_MODELS_DATE"))
    local_usd_per_gpu_second: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, validation_alias=_env("ATELIER_LOCAL_USD_PER_GPU_SECOND")
    )

    # The operator's budgets (USD) for every conversation and every user's UTC day, and
    # the estimate above which the chat asks before spending. Users may set lower ones.
    budget_thread_usd: Dollars | None = Field(
        None, validation_alias=_env("ATELIER_BUDGET_THREAD_USD")
    )
    budget_user_day_usd: Dollars | None = Field(
        None, validation_alias=_env("ATELIER_BUDGET_USER_DAY_USD")
    )
    confirm_above_usd: Dollars | None = Field(
        Decimal("1.00"), validation_alias=_env("ATELIER_CONFIRM_ABOVE_USD")
    )

    admin_password: SecretStr | None = Field(None, validation_alias=_env("ATELIER_ADMIN_PASSWORD"))
    auth_secret: SecretStr | None = Field(None, validation_alias=_env("CHAINLIT_AUTH_SECRET"))

    log_json: bool = Field(False, validation_alias=_env("ATELIER_LOG_JSON"))
    log_level: str = Field("info", validation_alias=_env("ATELIER_LOG_LEVEL"))
    max_message_chars: Annotated[int, Field(ge=100, le=1_000_000)] = Field(
        8000, validation_alias=_env("ATELIER_MAX_MESSAGE_CHARS")
    )

    # Spending and resource guards (issue 12): a model without a price is refused or
    # charged a ceiling per output; one message may make only so many tool calls; users
    # may name local models only as hub ids or folders inside the operator's models folder.
    unpriced_policy: Literal["reserve", "refuse"] = Field(
        "reserve", validation_alias=_env("ATELIER_UNPRICED_POLICY")
    )
    unpriced_reserve_usd: Annotated[Decimal, Field(gt=0, lt=1_000_000, decimal_places=6)] = Field(
        Decimal("0.50"), validation_alias=_env("ATELIER_UNPRICED_RESERVE_USD")
    )
    max_tool_calls_per_turn: Annotated[int, Field(ge=1, le=1000)] = Field(
        12, validation_alias=_env("ATELIER_MAX_TOOL_CALLS_PER_TURN")
    )
    local_models_dir: Path | None = Field(None, validation_alias=_env("ATELIER_LOCAL_MODELS_DIR"))

    # Downloading provider outputs (issue 12, SSRF): only public addresses are fetched;
    # these comma-separated host[:port], IP[:port] or CIDR entries are the operator's
    # exceptions (a self-hosted provider on a private address). Parsed here so that a bad
    # entry stops start-up naming the variable.
    fetch_allow_hosts: str = Field("", validation_alias=_env("ATELIER_FETCH_ALLOW_HOSTS"))

    # Login limits (issue 12, guessing): failed logins allowed per account and per client
    # address within the window; past either, logins are refused with 429 until the
    # oldest failure leaves the window. Counts live in memory, or in Redis when a URL is
    # given (several app processes then share them; needs the `redis` extra).
    login_max_failures: Annotated[int, Field(ge=1, le=10_000)] = Field(
        10, validation_alias=_env("ATELIER_LOGIN_MAX_FAILURES")
    )
    login_max_failures_per_address: Annotated[int, Field(ge=1, le=100_000)] = Field(
        50, validation_alias=_env("ATELIER_LOGIN_MAX_FAILURES_PER_ADDRESS")
    )
    login_window_s: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = Field(
        900, validation_alias=_env("ATELIER_LOGIN_WINDOW_SECONDS")
    )
    redis_url: str | None = Field(None, validation_alias=_env("ATELIER_REDIS_URL"))
    # Local GPU jobs on `atelier worker` processes (issue 18): Celery on this Redis URL;
    # unset, they run in this process. Keys start with the prefix (one per deployment).
    broker_url: str | None = Field(None, validation_alias=_env("ATELIER_BROKER_URL"))
    broker_prefix: str = Field("atelier:", validation_alias=_env("ATELIER_BROKER_PREFIX"))
    # GET /metrics (Prometheus) answers only with this bearer token; unset, it is a 404.
    metrics_token: SecretStr | None = Field(None, validation_alias=_env("ATELIER_METRICS_TOKEN"))

    # The HTTP API (issue 19), per API token: requests per minute, jobs running at once
    # (both answered 429 with Retry-After past the limit; shared through ATELIER_REDIS_URL
    # when set), and the largest request body (413), uploads included.
    api_rate_per_minute: Annotated[int, Field(ge=1, le=100_000)] = Field(
        60, validation_alias=_env("ATELIER_API_RATE_PER_MINUTE")
    )
    api_concurrent_jobs: Annotated[int, Field(ge=1, le=1000)] = Field(
        4, validation_alias=_env("ATELIER_API_CONCURRENT_JOBS")
    )
    api_max_request_mb: Annotated[int, Field(ge=1, le=1024)] = Field(
        25, validation_alias=_env("ATELIER_API_MAX_REQUEST_MB")
    )

    # Uploads (issue 12, memory): how many uploads one user may send at the same time;
    # more answer 429. Each is streamed to disk with the size limit of Chainlit's
    # [features.spontaneous_file_upload] max_size_mb enforced while reading.
    uploads_per_user: Annotated[int, Field(ge=1, le=100)] = Field(
        3, validation_alias=_env("ATELIER_UPLOADS_PER_USER")
    )

    # Batches and schedules (issue 17): how often a batch item that fails its quality
    # checks is made again with a new seed, and a provider error retried with the same
    # one; the most items one batch takes; the operator's object templates (a TOML file
    # extending or replacing tools/object_templates.toml); how often the scheduler looks
    # for due schedules, and what a run missed while the app was down does.
    batch_qc_retries: Annotated[int, Field(ge=0, le=5)] = Field(
        2, validation_alias=_env("ATELIER_BATCH_QC_RETRIES")
    )
    batch_error_retries: Annotated[int, Field(ge=0, le=5)] = Field(
        2, validation_alias=_env("ATELIER_BATCH_ERROR_RETRIES")
    )
    batch_max_items: Annotated[int, Field(ge=1, le=100_000)] = Field(
        1000, validation_alias=_env("ATELIER_BATCH_MAX_ITEMS")
    )
    templates_file: Path | None = Field(None, validation_alias=_env("ATELIER_TEMPLATES_FILE"))
    schedule_poll_s: Annotated[float, Field(ge=0.1, le=3600)] = Field(
        30.0, validation_alias=_env("ATELIER_SCHEDULE_POLL_S")
    )
    schedule_missed: Literal["run_once", "skip"] = Field(
        "run_once", validation_alias=_env("ATELIER_SCHEDULE_MISSED")
    )

    # Media on S3-compatible object storage (issue 18): set a bucket and every app process
    # keeps its images and clips there instead of under data_dir/media (thumbnails stay a
    # local cache). Credentials come from the standard AWS environment or config files.
    # With presign, /media answers its owner with a redirect to a link valid 60 s (the
    # browser must reach the endpoint); without, the app streams the file itself.
    media_s3_bucket: str | None = Field(None, validation_alias=_env("ATELIER_MEDIA_S3_BUCKET"))
    media_s3_endpoint_url: str | None = Field(
        None, validation_alias=_env("ATELIER_MEDIA_S3_ENDPOINT_URL")
    )
    media_s3_prefix: str = Field("media/", validation_alias=_env("ATELIER_MEDIA_S3_PREFIX"))
    media_s3_region: str | None = Field(None, validation_alias=_env("ATELIER_MEDIA_S3_REGION"))
    media_s3_presign: bool = Field(False, validation_alias=_env("ATELIER_MEDIA_S3_PRESIGN"))

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("fetch_allow_hosts")
    @classmethod
    def _allow_list(cls, value: str) -> str:
        parse_allow_list(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith(_SQLITE_PREFIXES + _POSTGRES_PREFIXES):
            return value
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value

    @field_validator(
        "llm_base_url", "openai_base_url", "replicate_base_url", "media_s3_endpoint_url"
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("local_device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.lower()
        if value not in {"auto", "cpu", "mps"} and not value.startswith("cuda"):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return value

    @property
    def resolved_lora_dir(self) -> Path:
        """Where LoRA files are looked up by name; defaults to <data dir>/loras."""
        return (self.lora_dir or self.data_dir / "loras").resolve()

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL; the default is a SQLite file in the data dir."""
        url = self.database_url
        if url is None:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'atelier.db').resolve()}"
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url[len("sqlite://") :]
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url

    @property
    def llm_configured(self) -> bool:
        """An agent needs either a key or a local OpenAI-compatible server."""
        return bool(self.llm_base_url or self.llm_api_key or self.openai_api_key)

    @property
    def llm_endpoint(self) -> tuple[str | None, str]:
        """(base URL, key) for the chat model; local servers accept any key."""
        base = self.llm_base_url or self.openai_base_url
        key = self.llm_api_key or self.openai_api_key
        return base, key.get_secret_value() if key else "not-needed"

    @property
    def openai_images_configured(self) -> bool:
        return self.openai_api_key is not None

    @property
    def provider_concurrency(self) -> dict[str, int]:
        """Per backend id, for `pipelines.provider_limits.configure` at start-up."""
        return {
            "openai": self.openai_concurrency,
            "replicate": self.replicate_concurrency,
            "local": self.local_concurrency,
        }

    @property
    def operator_limits(self) -> OperatorLimits:
        return OperatorLimits(
            thread_usd=self.budget_thread_usd,
            user_day_usd=self.budget_user_day_usd,
            confirm_above_usd=self.confirm_above_usd,
            unpriced_policy=self.unpriced_policy,
            unpriced_reserve_usd=self.unpriced_reserve_usd,
        )


_ENV_NAMES = {
    name: (field.validation_alias.choices[0] if field.validation_alias else name.upper())
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning validation errors into one message that names each variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            name = _ENV_NAMES.get(field, field)
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("Invalid configuration: " + "; ".join(problems)) from None
