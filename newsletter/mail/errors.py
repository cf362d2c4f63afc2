"""How a send fails: what every mail backend raises, so the ledger can tell a retry from a refusal."""


class TemporaryDeliveryError(Exception):
    """The server said try later (4xx) or the connection dropped."""


class PermanentDeliveryError(Exception):
    """The server refused this recipient or message (5xx)."""


class MailServerUnavailable(TemporaryDeliveryError):
    """No session with the mail server at all (connect, TLS or login failed): no recipient's fault."""


class DeliveryConfigError(ValueError):
    """A delivery setting that cannot work (unreadable DKIM key, ...)."""
