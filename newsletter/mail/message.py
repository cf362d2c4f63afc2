"""One digest email: headers mail providers require, MIME parts, and the policy that writes them."""

from __future__ import annotations

import datetime as dt
import email.errors
import email.generator
import functools
import io
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.mail.dkim import DkimSigner
    from newsletter.render import RenderedDigest
    from newsletter.tokens import SubscriberLinks

MAX_LINE_OCTETS = 998
_MESSAGE_ID_NAMESPACE = uuid.UUID("5b0e3c1e-6f1d-4d7e-9a43-0d1c2f6a7b80")


class _HeaderClasses(HeaderRegistry):
    """The standard registry, but each header class is made once (the stock one builds a class per header)."""

    @functools.cache  # noqa: B019 - one module-level instance lives as long as the process anyway
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


# Headers whose values are ASCII by construction (URLs, ids, tokens). The email package would write a
# long one as RFC 2047 encoded words, which RFC 2369/8058 readers do not decode: a provider then finds
# no unsubscribe URL. These are written as is instead.
LITERAL_HEADERS = frozenset(
    {"message-id", "list-id", "list-unsubscribe", "list-unsubscribe-post", "feedback-id", "x-digest-day"}
)


class InvalidHeaderValue(ValueError):
    """A value that cannot be written literally in a header (not printable ASCII, or too long to fold)."""


def literal_header_value(name: str, value: str) -> str:
    """`value` as one line of printable ASCII for header `name`; InvalidHeaderValue says why it cannot be."""
    text = header_text(value)
    unwritable = next((char for char in text if not " " <= char <= "~"), None)
    if unwritable is not None:
        raise InvalidHeaderValue(
            f"{name} must be printable ASCII, but {text!r} holds {unwritable!r} "
            "(a URL needs its host in punycode and its path percent-encoded)"
        )
    if "=?" in text:
        raise InvalidHeaderValue(f"{name} value {text!r} holds '=?', which mail readers take for an encoded word")
    return text


def fold_literal(name: str, value: str, linesep: str = "\r\n", max_line_length: int = 78) -> str:
    """`name: value` folded only at spaces (RFC 5322 folding white space); a long token keeps its line."""
    first, *words = literal_header_value(name, value).split(" ")
    lines = [f"{name}: {first}"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) <= max_line_length:
            lines[-1] += f" {word}"
        else:
            lines.append(f" {word}")
    longest = max(lines, key=len)
    if len(longest) > MAX_LINE_OCTETS:  # ASCII: characters are octets
        raise InvalidHeaderValue(f"{name} holds a {len(longest)}-octet line, over SMTP's {MAX_LINE_OCTETS}")
    return linesep.join(lines) + linesep


# Headers whose value is the same in every digest of a day (or of a language): parsed once, not per message.
# Parsed headers are immutable, so one object can sit in many messages.
REPEATED_HEADERS = frozenset(
    {"from", "list-id", "list-unsubscribe-post", "feedback-id", "subject", "mime-version", "content-type",
     "content-transfer-encoding", "x-digest-day"}
)  # fmt: skip


class LiteralHeaderPolicy(EmailPolicy):
    """email.policy.default, except that LITERAL_HEADERS are checked when set and written literally, and
    REPEATED_HEADERS are parsed once per value."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, str) and name.lower() in REPEATED_HEADERS:
            return _parsed_once(self, name, value)
        return self._store_parse(name, value)

    def _store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if name.lower() in LITERAL_HEADERS and isinstance(value, str):
            # Refused here, while the message is built, rather than when it is written out mid-send.
            fold_literal(name, value, self.linesep, self.max_line_length or MAX_LINE_OCTETS)
            value = literal_header_value(name, value)
        return super().header_store_parse(name, value)

    def fold(self, name: str, value: Any) -> str:
        if name.lower() in LITERAL_HEADERS:
            return fold_literal(name, str(value), self.linesep, self.max_line_length or MAX_LINE_OCTETS)
        folded: str = super().fold(name, value)  # the stub leaves it untyped
        return folded

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in REPEATED_HEADERS:
            return _folded_once(self, name, value)
        return self._fold_binary(name, value)

    def _fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in LITERAL_HEADERS:
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


@functools.lru_cache(maxsize=512)
def _parsed_once(policy: LiteralHeaderPolicy, name: str, value: str) -> tuple[str, Any]:
    return policy._store_parse(name, value)


@functools.lru_cache(maxsize=512)
def _folded_once(policy: LiteralHeaderPolicy, name: str, value: Any) -> bytes:
    return policy._fold_binary(name, value)


class WireGenerator(BytesGenerator):
    """The email package's generator, writing a body's lines in one piece rather than one call per line
    (the same bytes; a digest has some 1,500 lines)."""

    def _write_lines(self, lines: str) -> None:
        if lines:
            self.write(self._NL.join(email.generator.NLCRE.split(lines)))  # type: ignore[attr-defined]


# email.policy.default with the cached registry (a third less time per message) and literal headers.
MESSAGE_POLICY = LiteralHeaderPolicy(header_factory=_HeaderClasses())
# What goes on the wire and into the outbox: the same policy with SMTP's CRLF line endings.
WIRE_POLICY = MESSAGE_POLICY.clone(linesep="\r\n")


class UnusableAddress(ValueError):
    """A stored address the message cannot be addressed to: our refusal, before any mail server saw it."""


@dataclass(frozen=True)
class Sender:
    """Who every digest is from: the From address and name, and the mailing list it belongs to."""

    address: str
    name: str
    list_id: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Sender:
        """The sender NEWSLETTER_FROM_ADDRESS, _FROM_NAME and _LIST_ID describe."""
        return cls(settings.from_address, settings.from_name, settings.list_id)


def header_text(value: str) -> str:
    """One line of header text: any line break or run of whitespace becomes one space."""
    # The email API refuses inner CR/LF but keeps a trailing one, which would end the header block.
    return " ".join(value.split())


def digest_message_id(sender: Sender, recipient: str, day: dt.date) -> str:
    """The same Message-ID every time a subscriber's digest for a day is sent (providers drop repeats)."""
    key = uuid.uuid5(_MESSAGE_ID_NAMESPACE, f"{sender.list_id}/{recipient.lower()}/{day.isoformat()}")
    return f"<digest.{day:%Y%m%d}.{key.hex}@{_domain(sender.address)}>"


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "localhost"


def recipient_address(recipient: str) -> Address:
    """The To address, its domain in IDNA; UnusableAddress when no ASCII header can carry it."""
    # Digests go out without SMTPUTF8, so the header must be ASCII: a non-ASCII domain has an ASCII
    # form, a non-ASCII local part has none (and the email package would write a broken encoded word).
    local, at, domain = recipient.rpartition("@")
    try:
        if not at or not local:
            raise ValueError("it has no local part before an @")
        return Address(addr_spec=f"{local}@{domain.encode('idna').decode('ascii')}")
    except (ValueError, UnicodeError, email.errors.MessageError) as exc:
        raise UnusableAddress(f"the address {recipient!r} cannot be written in a To header: {exc}") from exc


def build_message(
    rendered: RenderedDigest,
    recipient: str,
    sender: Sender,
    links: SubscriberLinks,
    message_id: str | None = None,
) -> EmailMessage:
    """A multipart/alternative digest with the headers mail providers require."""
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["Subject"] = header_text(rendered.subject)
    # As text, so that the parsed header is shared by every message (REPEATED_HEADERS).
    message["From"] = str(Address(display_name=header_text(sender.name), addr_spec=sender.address))
    message["To"] = recipient_address(recipient)
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = message_id or make_msgid(domain=_domain(sender.address))
    list_id = header_text(sender.list_id)
    message["List-Id"] = f"arXiv digest <{list_id}>"
    message["List-Unsubscribe"] = f"<{header_text(links.unsubscribe)}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Feedback-ID"] = f"digest:{list_id}"
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte=transfer_encoding(rendered.text))
    html = fold_html_lines(rendered.html)
    message.add_alternative(html, subtype="html", charset="utf-8", cte=transfer_encoding(html))
    # Our own boundary: the email package would pick a random one and search the whole message for it.
    message.replace_header("Content-Type", f'multipart/alternative; boundary="{part_boundary(rendered)}"')
    return message


# Long and random, so no digest holds it by chance; a text that does (on purpose) gets a fresh one.
_BOUNDARY = f"=_digest_{secrets.token_hex(16)}"


def part_boundary(rendered: RenderedDigest) -> str:
    """A MIME boundary that occurs in neither part: the same one for every digest, unless a part holds it."""
    boundary = _BOUNDARY
    while boundary in rendered.text or boundary in rendered.html:
        boundary = f"=_digest_{secrets.token_hex(16)}"
    return boundary


# Octets a folded HTML line may hold: SMTP's limit less room for an empty comment's opening and the CRLF.
_HTML_LINE_OCTETS = MAX_LINE_OCTETS - 8
# Pieces of a line: what no break may enter (a comment, which Outlook reads when conditional, a declaration,
# an element whose content a break would change or a client may read verbatim), a tag (its quoted values
# may hold ">"), or text between them.
_HTML_PIECES = re.compile(
    r"""(<!--.*?-->|<(style|script|pre|textarea|title)\b.*?</\2\s*>|<[!?][^>]*>|<(?:[^>"']|"[^"]*"|'[^']*')*>)""",
    re.IGNORECASE | re.DOTALL,
)
_VERBATIM_OPENS = re.compile(r"<!--|<(style|script|pre|textarea|title)\b", re.IGNORECASE)
_TAG_NAME = re.compile(r"</?[A-Za-z][^\s/>]*")
# The end of text that may be a character reference cut short (&amp; -> &am).
_PARTIAL_REFERENCE = re.compile(r"&#?[A-Za-z0-9]{0,32}$")


def fold_html_lines(html: str) -> str:
    """The HTML with its long lines broken where a break changes nothing shown, so the part can go as 8bit.

    An abstract is one line of 1 to 2 KB; with a line over SMTP's 998 octets the whole part had to be
    base64, a third more bytes and the larger part of building a message. A line is broken inside a tag
    after its name, at a space of text, or (in Chinese, with no space in reach) by an empty comment,
    never inside a comment or a style, script, pre, textarea or title element; a line that cannot be
    broken so, or that begins or ends inside a tag, is left as it is (the part then goes as base64).
    """
    lines = html.split("\n")
    long = [index for index, line in enumerate(lines) if len(line) * 4 > _HTML_LINE_OCTETS
            and _octets(line) > _HTML_LINE_OCTETS]  # fmt: skip
    if not long:
        return html
    spanned = _lines_inside_verbatim(html)
    for index in long:
        if index not in spanned:
            lines[index] = _fold_html_line(lines[index])
    return "\n".join(lines)


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _lines_inside_verbatim(html: str) -> set[int]:
    """The lines that a comment or a style, script, pre, textarea or title element spanning lines (or never
    closed) touches."""
    found: set[int] = set()
    line, counted, position = 0, 0, 0
    while (opened := _VERBATIM_OPENS.search(html, position)) is not None:
        closer = re.compile("-->" if opened.group(1) is None else f"</{opened.group(1)}", re.IGNORECASE)
        closed = closer.search(html, opened.end())
        position = closed.end() if closed is not None else len(html)
        line += html.count("\n", counted, opened.start())
        last = line + html.count("\n", opened.start(), position)
        if last > line or closed is None:
            found.update(range(line, last + 1))
        line, counted = last, position
    return found


def _fold_html_line(line: str) -> str:
    """One line broken into lines of at most _HTML_LINE_OCTETS octets where it can be; as it was otherwise."""
    pieces = _HTML_PIECES.split(line)
    # split() gives text, then the whole match and the element name of a verbatim one, and so on.
    texts, markup = pieces[0::3], pieces[1::3]
    if any("<" in text or ">" in text for text in texts):
        return line  # a tag begun on another line, or not closed: its attributes would look like text
    out: list[str] = []
    width = 0
    for kind, piece in _alternate(texts, markup):
        while piece:
            size = _octets(piece)
            if width + size <= _HTML_LINE_OCTETS:
                out.append(piece)
                width += size
                break
            name = None if kind == "text" else _TAG_NAME.match(piece)
            if kind == "text":
                head, piece = _break_text(piece, _HTML_LINE_OCTETS - width)
            elif name is not None and width + name.end() <= _HTML_LINE_OCTETS and (
                _octets(piece[name.end():]) <= _HTML_LINE_OCTETS
            ):
                head, piece = piece[: name.end()], piece[name.end():]  # whitespace after a tag's name
            elif size <= _HTML_LINE_OCTETS - 3 and width:
                head = "<!--"  # before what no break may enter, an empty comment: it shows as nothing
                piece = "-->" + piece
            else:
                return line  # one attribute, comment or element longer than a line: not ours to break
            if not head and not width:
                return line  # no break found that moves on
            out.append(head + "\n")
            width = 0
    return "".join(out)


def _alternate(texts: list[str], markup: list[str]) -> Iterator[tuple[str, str]]:
    for index, text in enumerate(texts):
        yield "text", text
        if index < len(markup):
            yield "markup", markup[index]


def _break_text(text: str, room: int) -> tuple[str, str]:
    """(the text up to a break, the rest): at the last space within `room` octets, else by an empty comment.

    A comment's opening may take the line 4 octets past `room`: _HTML_LINE_OCTETS leaves that much.
    """
    fits = text.encode("utf-8")[: max(room, 0)].decode("utf-8", "ignore")
    space = fits.rfind(" ")
    if space >= 0:
        return text[:space], text[space + 1:]  # the line break stands for the space
    partial = _PARTIAL_REFERENCE.search(fits)
    if partial is not None and partial.start() > 0:
        fits = fits[: partial.start()]  # never inside a character reference
    return fits + "<!--", "-->" + text[len(fits):]


def transfer_encoding(text: str) -> str:
    """8bit (or 7bit) when every line fits SMTP's 998 octets, base64 otherwise."""
    # The email package's own choice wraps at 78 and so quoted-printables nearly every digest: 3x the
    # bytes for Chinese and most of the time spent building a message.
    # Bytes' line breaks, not str's: str.splitlines also breaks at U+2028 and the like, which stay inside a line.
    # A character is at most 4 octets: only a stretch between newlines longer than a quarter of the limit
    # can be over it, and only those are encoded to count (a stretch may hold more breaks: never shorter).
    if any(
        len(stretch) * 4 > MAX_LINE_OCTETS
        and max((len(line) for line in stretch.encode("utf-8").splitlines()), default=0) > MAX_LINE_OCTETS
        for stretch in text.split("\n")
    ):
        return "base64"
    return "7bit" if text.isascii() else "8bit"


def message_bytes(message: EmailMessage, signer: DkimSigner | None) -> bytes:
    """The message as sent on the wire (CRLF), signed when DKIM is configured."""
    buffer = io.BytesIO()
    WireGenerator(buffer, mangle_from_=False, policy=WIRE_POLICY).flatten(message)
    raw = buffer.getvalue()
    return signer.sign(raw) if signer is not None else raw
