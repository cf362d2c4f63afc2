"""How a send fails: what every mail backend raises, so the ledger can tell a retry, a refusal and whose fault."""


class TemporaryDeliveryError(Exception):
    """The server said try later (4xx) or the connection dropped."""


class PermanentDeliveryError(Exception):
    """The server refused this recipient (5xx at RCPT for the address or mailbox): counts toward a bounce."""


class DeliveryStopped(Exception):
    """No recipient's fault: every later message would fail the same way, so the day's delivery stops."""


class MailServerUnavailable(TemporaryDeliveryError, DeliveryStopped):
    """No session with the mail server at all (connect, TLS or login failed): no recipient's fault."""


class SenderRefused(DeliveryStopped):
    """The server refused our sender, the message or the session (5xx at MAIL FROM or DATA, 5.7.x policy)."""


class DeliveryConfigError(ValueError):
    """A delivery setting that cannot work (unreadable DKIM key, ...)."""
