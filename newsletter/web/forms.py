"""The forms the pages post, with the longest value each field accepts."""

from __future__ import annotations

from pydantic import BaseModel, Field

MAX_KEYWORDS_TEXT = 8000


class PreferencesForm(BaseModel):
    """Keywords (one per line), digest language and time zone, as typed."""

    keywords: str = Field("", max_length=MAX_KEYWORDS_TEXT)
    language: str = Field("", max_length=16)
    timezone: str = Field("", max_length=64)
    action: str = Field("", max_length=16)

    @property
    def lines(self) -> list[str]:
        """The keyword lines."""
        return self.keywords.splitlines()

    def fields(self) -> dict[str, str]:
        """The values to show again in the form and to hand to the subscriber service."""
        return self.model_dump(exclude={"action"})


class SubscribeForm(PreferencesForm):
    email: str = Field("", max_length=320)


class ManageForm(PreferencesForm):
    paused: bool = False


class DeleteForm(BaseModel):
    confirm_delete: str = Field("", max_length=8)


class ClearFeedbackForm(BaseModel):
    """The manage page's "forget" buttons: one paper's verdict, or every verdict when empty."""

    arxiv_id: str = Field("", max_length=40)
