"""Settings: every NEWSLETTER_* environment variable (and `.env`), read once and validated."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from newsletter.resources import TEMPLATES_DIR  # noqa: F401  (imported from here by render and web)

# A link is the base URL plus a path and a signed token (~150 characters); List-Unsubscribe
# carries it on one header line, which SMTP caps at 998 octets.
MAX_URL_LENGTH = 500
# Words that mark a secret copied from an example rather than generated; any of them inside refuses it.
_PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "please-change", "placeholder", "example", "secret",
                      "password", "default", "xxxx", "1234", "test")
# A secret from `python -c "import secrets; print(secrets.token_urlsafe(32))"` has 43 characters.
MIN_SECRET_LENGTH = 32
MIN_SECRET_DISTINCT_CHARACTERS = 10


class Settings(BaseSettings):
    """The service's configuration; every field maps to NEWSLETTER_<NAME>."""

    model_config = SettingsConfigDict(
        env_prefix="NEWSLETTER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "production", "test"] = "development"
    # Our own messages on stderr from this level; DEBUG also prints an unexpected error's traceback.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"
    database_url: str = "sqlite:///newsletter.db"
    redis_url: str = "redis://localhost:6379/0"

    arxiv_feed_url: str = "https://rss.arxiv.org/rss/"
    arxiv_api_url: str = "https://export.arxiv.org/api/query"
    arxiv_delay_seconds: float = Field(3.0, ge=0)
    arxiv_timeout_seconds: float = Field(30.0, gt=0)
    arxiv_max_retries: int = Field(4, ge=0, le=10)
    arxiv_retry_base_seconds: float = Field(2.0, ge=0)
    # "selected": ask the API only for the papers some subscriber's keywords match on the feed's own
    # text, when that takes fewer requests; the others keep the feed's fields.
    arxiv_details: Literal["all", "selected"] = "all"
    categories: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["cs.AI", "cs.LG", "cs.CL", "cs.CV", "cs.RO", "stat.ML"]
    )

    deepl_auth_key: str | None = None
    deepl_server_url: str | None = None
    deepl_daily_character_budget: int = Field(400_000, ge=0)
    deepl_glossary_file: Path | None = None
    # How long one request may take before we stop waiting (DeepL still bills it); below 1 s acts as 1 s.
    deepl_timeout_seconds: float = Field(30.0, gt=0)
    # The largest request, in characters: one must translate well within the timeout.
    deepl_request_characters: int = Field(5_000, ge=200, le=20_000)
    # Resends of a request DeepL refused unbilled (429, 5xx, unreachable), with doubling waits.
    deepl_max_retries: int = Field(3, ge=0, le=10)
    deepl_retry_base_seconds: float = Field(1.0, ge=0)

    mail_backend: Literal["outbox", "smtp"] = "outbox"
    outbox_dir: Path = Path("outbox")
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_security: Literal["none", "starttls", "ssl"] = "none"
    smtp_timeout_seconds: float = Field(30.0, gt=0)
    # Messages per second from one process, evenly spaced (a server's limit is on the rate, not on bursts).
    smtp_max_per_second: float = Field(20.0, gt=0)
    # Sessions one process keeps busy at once (one sender thread each) while it composes the next digests.
    smtp_pool_size: int = Field(2, ge=1, le=32)
    # MAIL, RCPT and DATA in one round trip where the server offers PIPELINING (RFC 2920).
    smtp_pipelining: bool = True
    smtp_max_attempts: int = Field(4, ge=1, le=10)
    smtp_retry_base_seconds: float = Field(1.0, ge=0)
    # A CA bundle to trust for STARTTLS / SSL (a private mail relay); the system store otherwise.
    smtp_ca_file: Path | None = None
    # A claimed delivery with no outcome after this long belongs to a sender that died: it is sent again.
    delivery_claim_lease_seconds: float = Field(600.0, ge=0)
    # Claims are taken, and outcomes recorded, this many at a time (outcomes also after so many seconds): a
    # crash may resend at most batch size + pool size digests the server accepted (README "Delivery").
    delivery_batch_size: int = Field(50, ge=1, le=1000)
    delivery_record_seconds: float = Field(2.0, gt=0, le=300)
    dkim_key_file: Path | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None

    from_address: str = "digest@localhost"
    from_name: str = "arXiv Digest"
    list_id: str = "arxiv-digest.localhost"
    base_url: str = "http://localhost:8000"
    # Checked even when unset (validate_default): production refuses to run without one.
    secret_key: str | None = Field(None, validate_default=True)

    # The web app: per-IP limit on form POSTs and on the keyword check, where the counters
    # live (memory:// per process, or redis://host:port/db shared by every web worker), and
    # the largest request body accepted.
    web_post_rate_limit: str = "20/minute"
    web_check_rate_limit: str = "200/minute"
    web_rate_limit_storage: str = "memory://"
    web_rate_limit_prefix: str = "newsletter-web"
    web_max_body_bytes: int = Field(64 * 1024, ge=1024)
    # Confirmation mails: at most so many per mailbox (its +tag removed), per domain and per client.
    web_confirm_mailbox_rate_limit: str = "3/hour"
    web_confirm_domain_rate_limit: str = "100/hour"
    web_confirm_client_rate_limit: str = "10/hour"
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or networks, comma
    # separated); empty: the connecting address is the client, whatever the headers say.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Processes the match stage scans papers in (forked, for a large day); 1 keeps it in one.
    match_processes: int = Field(2, ge=1, le=64)
    # The TF-IDF cosine margin that ranks a paper with those liked (or refused); newsletter.ranking.
    feedback_closeness: float = Field(0.15, gt=0, le=1)

    # The service (Celery workers and beat); see README "Running the full service".
    delivery_chunk_size: int = Field(200, ge=1, le=10_000)
    celery_visibility_timeout_seconds: float = Field(3600.0, gt=0)
    beat_timezone: str = "America/New_York"
    # When the feed usually shows the day (the alert for a late feed waits an hour past it) and until when to poll.
    beat_poll_start: dt.time = dt.time(20, 30)
    beat_poll_end: dt.time = dt.time(4, 0)
    # A conditional request (ETag / If-Modified-Since): an unchanged feed costs one empty 304.
    beat_poll_every_minutes: int = Field(2, ge=1, le=60)
    # Feed days without an announcement beyond weekends (arXiv's published holiday schedule).
    arxiv_holidays: Annotated[list[dt.date], NoDecode] = Field(
        default_factory=lambda: [dt.date(2026, 11, 27), dt.date(2026, 12, 25), dt.date(2027, 1, 1)]
    )

    # The operator: alerts go to this address; the /admin pages and /metrics need this token (off without it).
    admin_email: str | None = None
    admin_token: str | None = None

    default_language: str = "ZH-HANS"
    default_timezone: str = "Asia/Shanghai"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        # `debug` and `Debug` are what people type; the logging module wants DEBUG.
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("categories", mode="before")
    @classmethod
    def _split_categories(cls, value: object) -> object:
        # A comma list is what people write in .env; pydantic-settings would demand JSON.
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("arxiv_holidays", mode="before")
    @classmethod
    def _split_holidays(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None  # NEWSLETTER_ADMIN_TOKEN= in a .env: the admin pages are off
        if value is not None and len(value.strip()) < 16:
            raise ValueError("NEWSLETTER_ADMIN_TOKEN must be a random value of 16+ characters (or unset: no /admin)")
        return value.strip() if value is not None else None

    @field_validator("categories")
    @classmethod
    def _check_categories(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one arXiv category is needed, e.g. cs.LG")
        for category in value:
            if not category.replace(".", "").replace("-", "").isalnum():
                raise ValueError(f"{category!r} is not an arXiv category such as cs.LG")
        return value

    @field_validator("base_url", "arxiv_feed_url", "arxiv_api_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must start with http:// or https://")
        if not value.isascii():
            # Links go into headers such as List-Unsubscribe, which carry ASCII only.
            raise ValueError(f"{value!r} must be ASCII: the host in punycode (xn--...), the path percent-encoded")
        if any(char.isspace() or char in '<>,"' for char in value):
            # Inside "<...>" in List-Unsubscribe these would end the URL or start a second one.
            raise ValueError(f"{value!r} must not contain spaces or any of < > , \" (percent-encode them)")
        if len(value) > MAX_URL_LENGTH:
            raise ValueError(
                f"{value[:60]!r}... is longer than {MAX_URL_LENGTH} characters: its links must fit one mail header line"
            )
        return value.rstrip("/") if not value.endswith("/rss/") else value

    @field_validator("default_timezone", "beat_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        for proxy in value:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ValueError(f"{proxy!r} is not an IP address or network such as 10.0.0.0/8") from exc
        return value

    @field_validator("web_post_rate_limit", "web_check_rate_limit", "web_confirm_mailbox_rate_limit",
                     "web_confirm_domain_rate_limit", "web_confirm_client_rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str, info: ValidationInfo) -> str:
        # The defaults parse (tests/test_web_abuse.py checks) and every command validates them:
        # `limits` is loaded only for a value someone set, so a CLI command does not pay for it.
        if info.field_name is not None and value == cls.model_fields[info.field_name].default:
            return value
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate limit such as 20/minute") from exc
        return value

    @model_validator(mode="after")
    def _check_dkim_complete(self) -> Settings:
        given = [self.dkim_key_file is not None, bool(self.dkim_selector), bool(self.dkim_domain)]
        if any(given) and not all(given):
            raise ValueError(
                "DKIM signing needs NEWSLETTER_DKIM_KEY_FILE, NEWSLETTER_DKIM_SELECTOR and NEWSLETTER_DKIM_DOMAIN "
                "all set (or none of them)"
            )
        return self

    @property
    def dkim_enabled(self) -> bool:
        """Whether outgoing mail is DKIM-signed."""
        return self.dkim_key_file is not None and bool(self.dkim_selector) and bool(self.dkim_domain)

    @field_validator("secret_key")
    @classmethod
    def _refuse_weak_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not a model one), so the error names NEWSLETTER_SECRET_KEY.
        if info.data.get("environment") == "production":
            weakness = secret_weakness(value)
            if weakness:
                raise ValueError(f"{weakness}; in production set it to a random value, e.g. the output of "
                                 'python -c "import secrets; print(secrets.token_urlsafe(32))"')
        return value

    @property
    def feed_url(self) -> str:
        """The announcement feed URL for the configured categories."""
        base = self.arxiv_feed_url if self.arxiv_feed_url.endswith("/") else self.arxiv_feed_url + "/"
        return base + "+".join(self.categories)


def secret_weakness(secret: str | None) -> str | None:
    """Why a signing secret is unfit for production (missing, short, low in entropy, a placeholder), or None."""
    key = (secret or "").strip()
    if not key:
        return "the secret key is not set"
    if len(key) < MIN_SECRET_LENGTH:
        return f"the secret key has {len(key)} characters, fewer than {MIN_SECRET_LENGTH}"
    lowered = key.lower()
    placeholder = next((word for word in _PLACEHOLDER_WORDS if word in lowered), None)
    if placeholder:
        return f"the secret key contains {placeholder!r}, so it looks like a placeholder"
    if len(set(key)) < MIN_SECRET_DISTINCT_CHARACTERS:
        return f"the secret key uses only {len(set(key))} distinct characters, too few to be random"
    return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's Settings, read once."""
    return Settings()
