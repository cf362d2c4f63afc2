"""GET /favicon.ico: the site's icon, which browsers ask for on every site."""

from fastapi import APIRouter
from fastapi.responses import FileResponse

from newsletter.config import TEMPLATES_DIR

router = APIRouter()

ICON = TEMPLATES_DIR / "web" / "static" / "favicon.ico"


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    """The icon bundled with the package."""
    return FileResponse(ICON, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=604800"})
