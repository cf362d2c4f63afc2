"""The two mails about a subscription: the double opt-in link, and "you are already subscribed"."""

from __future__ import annotations

import datetime as dt
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from newsletter.config import Settings


def _message(settings: Settings, recipient: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = Address(display_name=settings.from_name, addr_spec=settings.from_address)
    # An Address object refuses line breaks, so no header can be smuggled in through the address.
    message["To"] = Address(addr_spec=recipient)
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = make_msgid(domain=settings.from_address.rpartition("@")[2] or "localhost")
    message["Auto-Submitted"] = "auto-generated"
    message["X-Digest-Day"] = "confirmations"
    message.set_content(body, charset="utf-8")
    return message


def confirmation_mail(settings: Settings, recipient: str, confirm_link: str) -> EmailMessage:
    """The double opt-in mail: one link to a page with a confirm button."""
    body = (
        "Please confirm your subscription to the arXiv digest by opening this link (valid for 7 days):\n"
        f"{confirm_link}\n\n"
        "请打开上面的链接确认订阅 arXiv 每日速递（7 天内有效）。\n\n"
        "If you did not ask for this, ignore this message: nothing will be sent.\n"
        "如果您没有申请订阅，请忽略此邮件，我们不会再发送任何内容。\n"
    )
    return _message(settings, recipient, "Confirm your arXiv digest subscription / 确认订阅 arXiv 每日速递", body)


def already_subscribed_mail(settings: Settings, recipient: str, manage_link: str) -> EmailMessage:
    """Sent instead of a confirmation when the address already receives the digest."""
    body = (
        "Someone (probably you) asked to subscribe this address to the arXiv digest, but it is subscribed "
        "already. To change your keywords, language or time zone, open:\n"
        f"{manage_link}\n\n"
        "有人（可能是您）申请用此地址订阅 arXiv 每日速递，但该地址已经订阅。"
        "如需修改关键词、语言或时区，请打开上面的链接。\n\n"
        "If you did not ask for this, ignore this message: nothing has changed.\n"
        "如果不是您本人操作，请忽略此邮件，您的订阅没有任何变化。\n"
    )
    return _message(settings, recipient, "You are already subscribed to the arXiv digest / 您已订阅", body)
