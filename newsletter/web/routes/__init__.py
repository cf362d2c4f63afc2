"""One APIRouter per resource; `create_app` includes them all."""

from newsletter.web.routes import admin, api, archive, confirm, health, manage, subscribe, unsubscribe

ROUTERS = [health.router, subscribe.router, api.router, confirm.router, manage.router, unsubscribe.router,
           archive.router, admin.router]
