"""One APIRouter per resource; `create_app` includes them all."""

from newsletter.web.routes import (
    admin,
    api,
    archive,
    confirm,
    favicon,
    feed,
    feedback,
    health,
    manage,
    subscribe,
    unsubscribe,
)

ROUTERS = [health.router, favicon.router, subscribe.router, api.router, confirm.router, manage.router,
           unsubscribe.router, archive.router, feedback.router, feed.router, admin.router]
