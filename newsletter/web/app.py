"""The web app: subscribe, confirm, manage, unsubscribe, archive. `create_app` assembles the pieces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from newsletter.config import TEMPLATES_DIR, Settings, get_settings
from newsletter.db import engine_for
from newsletter.web.deps import SigningSecret, WebServices
from newsletter.web.middleware import add_error_pages, add_page_context
from newsletter.web.routes import ROUTERS
from newsletter.web.security import BodySizeLimit, RateLimiter


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app for `settings` (default: the process's Settings)."""
    settings = settings or get_settings()
    engine = engine_for(settings.database_url)
    limiter = RateLimiter(settings.web_rate_limit_storage, settings.web_rate_limit_prefix)
    services = WebServices(settings, engine, SigningSecret(engine, settings), limiter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.secret.load()  # at startup, so the first request does not wait on the database
        yield

    app = FastAPI(title="arXiv digest", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.services = services
    app.state.limiter = limiter
    add_error_pages(app)
    # Inside the page middleware: an exception it sees from a body read would arrive wrapped in a
    # task group's ExceptionGroup, and FastAPI would answer 400 instead of 413.
    app.add_middleware(BodySizeLimit, max_bytes=settings.web_max_body_bytes)
    add_page_context(app, secure_cookies=settings.base_url.startswith("https://"))
    if settings.trusted_proxies:
        # Outermost: the rate limits count the client the trusted proxy names, not the proxy.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    app.mount("/static", StaticFiles(directory=str(TEMPLATES_DIR / "web" / "static")), name="static")
    for router in ROUTERS:
        app.include_router(router)
    return app
