"""The HTML part's long lines folded where a break changes nothing shown, so it goes as 8bit, not base64.

An abstract is one HTML line of 1 to 2 KB, over SMTP's 998 octets: unfolded, the whole part had to be
base64, a third more bytes on the wire. Each case is checked by parsing both documents (lxml, as
premailer does) and comparing what they hold: the same elements, attributes and text, whitespace runs
counted as one space and comments left out (the fold's breaks in Chinese text are empty comments).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from lxml import html as lxml_html

from newsletter.mail.message import MAX_LINE_OCTETS, fold_html_lines, transfer_encoding

CARD = ('<p class="a" style="margin:8px 0 0"><b class="lb" style="font-size:12px;color:#57606a">{label}</b><br>'
        "{text}</p>")
ENGLISH = ("Social media platforms have become primary channels for health information in the Global South. "
           "We present a post-facto analysis of 30 multilingual transcripts; ") * 12
# DeepL's Chinese: a space only around Latin words, and long runs with none.
CHINESE = "社交媒体平台已成为全球南方获取健康信息的主要渠道。我们以印度 YouTube 上的讨论为案例，" * 15
CHINESE += "分析表明" * 200


OUTLOOK = "<!--[if mso | IE]><table role=\"presentation\"><tr><td><![endif]-->"


def document(body: str) -> str:
    return f'<html><head><meta charset="utf-8"><style>p {{ margin: 0 }}</style></head><body>{body}</body></html>'


def shown(html: str) -> str:
    """The parsed document, serialised with comments dropped and every whitespace run as one space."""
    tree = lxml_html.document_fromstring(html)
    etree.strip_tags(tree, etree.Comment)
    return re.sub(r"[ \t\r\n\f]+", " ", etree.tostring(tree, encoding="unicode"))


def longest_line(html: str) -> int:
    return max(len(line.encode("utf-8")) for line in html.split("\n"))


HOSTILE = {
    "an English abstract": CARD.format(label="Abstract", text=ENGLISH),
    "a Chinese abstract, long runs without a space": CARD.format(label="中文摘要", text=CHINESE),
    "character references where a break would fall": CARD.format(label="x", text="&amp;&#39;&lt;" * 300),
    "highlighted words in a long line": CARD.format(
        label="Abstract", text=" ".join(f'a <b class="hit" style="background:#fff1a8">term{i}</b> b' for i in range(60))
    ),
    "a line that is all tags": "".join(f'<span style="color:#{i:06x}"></span>' for i in range(80)),
    "a Unicode line separator inside the text": CARD.format(label="x", text=("word \u2028 " * 200)),
    "an Outlook conditional comment on the long line": f"{OUTLOOK}{ENGLISH}{OUTLOOK}",
    "a run of Chinese right before a comment": "中" * 329 + OUTLOOK + "中" * 10,
    "a bare ampersand before a run of Chinese": "<p>&" + "中" * 600 + "</p>",
    "a bare ampersand before a run of Latin letters": "x" * 5 + "&" + "a" * 1200,
    "a long element name where the line is full": "a" * 985 + "<blockquote>x</blockquote>" + "b" * 100,
}


@pytest.mark.parametrize("body", list(HOSTILE.values()), ids=list(HOSTILE))
def test_every_long_line_is_folded_and_the_document_holds_the_same(body: str) -> None:
    html = document(body)
    assert transfer_encoding(html) == "base64"

    folded = fold_html_lines(html)

    assert longest_line(folded) <= MAX_LINE_OCTETS
    assert transfer_encoding(folded) == "8bit" or folded.isascii()
    assert shown(folded) == shown(html)
    # Outlook's conditional comments arrive whole.
    assert folded.count(OUTLOOK) == html.count(OUTLOOK)


LEFT_AS_IS = {
    "a long line of CSS": '<style>' + "p.x { color: red } " * 80 + '</style><p>a</p>',
    "a comment longer than a line": "<!-- " + "note " * 250 + "-->",
    "a style block spanning lines": "<style>\n" + "p.x { color: red } " * 80 + "\n</style><p>a</p>",
    "a tag begun on the line before": '<a\n title="' + "中" * 500 + '" href="x">link</a>',
    "a tag that ends on the next line": "word " * 150 + '<img alt="' + "中" * 400 + '"\n src="x.png">',
    "a quoted > inside a long attribute": '<a title="a>' + "中" * 600 + '" href=x>t</a>',
    "a comment never closed": "<p>a</p><!-- " + "中" * 600,
    "a pre element never closed": "<p>a</p><pre>" + "x " * 600,
    "one attribute longer than the limit": f'<a href="https://arxiv.org/abs/{"1" * 1200}">x</a>',
    "preformatted text": "<pre>" + "x " * 700 + "</pre>",
}


@pytest.mark.parametrize("body", list(LEFT_AS_IS.values()), ids=list(LEFT_AS_IS))
def test_a_line_a_break_could_change_is_left_as_it_is_and_the_part_goes_as_base64(body: str) -> None:
    html = document(body)

    folded = fold_html_lines(html)

    assert folded == html
    assert transfer_encoding(folded) == "base64"


def test_short_lines_are_not_touched() -> None:
    html = document(CARD.format(label="Abstract", text="A short abstract."))

    assert fold_html_lines(html) is html


PIECES = st.sampled_from([
    '<p class="a" style="margin:8px 0 0">', "</p>", '<b class="hit" style="background:#fff1a8">', "</b>", "<br>",
    '<a href="https://arxiv.org/abs/2611.00001" style="color:#0969da">', "</a>", "&amp;", "&#39;", " ", "\n",
    "量子纠缠", "。", "x" * 300, "中" * 400, "word " * 50, "<!--[if mso]><table><tr><td><![endif]-->",
    "<style>p{color:red}</style>", '<img alt="a figure" src="https://example.org/a.png">', "&", "&am",
])
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<>&"), max_size=300)


@given(body=st.lists(PIECES | TEXT, max_size=60).map("".join))
def test_folding_never_changes_the_document_and_breaks_what_it_may(body: str) -> None:
    html = document(body)

    folded = fold_html_lines(html)

    assert shown(folded) == shown(html)
    folded_lines, lines = folded.split("\n"), set(html.split("\n"))
    # A line still too long is one the fold left exactly as it was (a comment or a style block on it).
    assert all(len(line.encode("utf-8")) <= MAX_LINE_OCTETS or line in lines for line in folded_lines)
    if "<!--" not in body and "<style" not in body:
        assert longest_line(folded) <= MAX_LINE_OCTETS
