"""The forms the pages post, with the longest value each field accepts."""

from __future__ import annotations

from pydantic import BaseModel, Field

from newsletter.subscribers import DigestChoices

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
    # The digest schedule and extras (templates/web/_digest_choices.html). A form without the marker
    # (an older page, a script) leaves them as stored: an absent checkbox would otherwise read as "off".
    digest_choices: str = Field("", max_length=1)
    frequency: str = Field("", max_length=16)
    weekday: str = Field("", max_length=16)
    empty_day_note: bool = False
    updates: bool = False

    def fields(self) -> dict[str, str]:
        """The keywords, language and time zone as typed."""
        return self.model_dump(include={"keywords", "language", "timezone"})

    def choices(self) -> DigestChoices:
        """The digest choices the form carries (none when it has no such fields)."""
        if not self.digest_choices:
            return DigestChoices()
        return DigestChoices(self.frequency, self.weekday, self.empty_day_note, self.updates)

    def choice_fields(self) -> dict[str, object]:
        """The digest choices as typed, to show again (nothing when the form has none)."""
        if not self.digest_choices:
            return {}
        return {"frequency": self.frequency, "weekday": self.weekday, "empty_day_note": self.empty_day_note,
                "updates": self.updates}


class DeleteForm(BaseModel):
    confirm_delete: str = Field("", max_length=8)


class ClearFeedbackForm(BaseModel):
    """The manage page's "forget" buttons: one paper's verdict, or every verdict when empty."""

    arxiv_id: str = Field("", max_length=40)
