"""What a subscriber's digest shows: header, keyword sections, every paper's fields and links, the size cap."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import unicodedata
from functools import lru_cache
from html.parser import HTMLParser

from arxiv import _feed

from newsletter.demo import SAMPLE_DIR
from newsletter.harvest import record_from_result
from newsletter.models import Paper, Translation
from newsletter.render import (
    HTML_SIZE_LIMIT,
    Digest,
    DigestRenderer,
    KeywordSection,
    PaperView,
    RenderedDigest,
    _compiled_email,
    compiled_email,
    paper_view,
    readable,
)
from newsletter.tokens import SubscriberLinks
from tests.real_text import reference_day

DAY = dt.date(2026, 11, 24)  # a Tuesday: announced Monday 23 Nov, 20:00 EST
LINKS = SubscriberLinks(
    manage="https://digest.example.org/manage/TOKEN-M",
    unsubscribe="https://digest.example.org/unsubscribe/TOKEN-U",
    archive="https://digest.example.org/archive/2026-11-24/TOKEN-A",
)
GENERATED = dt.datetime(2026, 11, 24, 0, 41, 7, tzinfo=dt.UTC)  # the morning after the announcement
GMAIL_CLIP_BYTES = 102 * 1024
HIT = r'<b class="hit" style="background:#fff1a8[^"]*"[^>]*>(.*?)</b>'


@lru_cache(maxsize=1)
def sample_papers() -> tuple[Paper, ...]:
    """The bundled sample's papers, parsed from real arXiv API replies."""
    records = [
        record_from_result(result)
        for path in sorted((SAMPLE_DIR / "api").glob("*.xml"))
        for result in _feed.parse(path.read_bytes()).results
    ]
    return tuple(
        Paper(
            arxiv_id=r.arxiv_id, version=r.version, title=r.title, abstract=r.abstract, authors=list(r.authors),
            categories=list(r.categories), primary_category=r.primary_category, comment=r.comment,
        )
        for r in records
    )


@lru_cache(maxsize=1)
def sample_translations() -> dict[str, Translation]:
    cache = json.loads((SAMPLE_DIR / "translations.json").read_text(encoding="utf-8"))["ZH-HANS"]
    return {
        arxiv_id: Translation(arxiv_id=arxiv_id, language="ZH-HANS", title=t["title"], abstract=t["abstract"])
        for arxiv_id, t in cache.items()
    }


def paper_by_id(arxiv_id: str) -> Paper:
    return next(p for p in sample_papers() if p.arxiv_id == arxiv_id)


def view(paper: Paper, terms: list[str], language: str = "ZH-HANS") -> PaperView:
    translation = sample_translations().get(paper.arxiv_id) if language.startswith("ZH") else None
    return paper_view(paper, translation, terms, translation_wanted=language.startswith("ZH"))


def make_digest(
    sections: list[tuple[str, list[PaperView]]], language: str = "ZH-HANS", timezone: str = "Asia/Shanghai"
) -> Digest:
    keyword_sections = [KeywordSection(keyword=keyword, papers=list(papers)) for keyword, papers in sections]
    return Digest(
        day=DAY, email="ada@example.org", language=language, timezone=timezone, sections=keyword_sections,
        links=LINKS, translation_missing=any(p.translation_missing for _, ps in sections for p in ps),
        generated_at=GENERATED,
    )


def many_papers(count: int) -> list[PaperView]:
    """`count` distinct papers, cycling through the sample's real titles and abstracts."""
    pool = sample_papers()
    papers = []
    for index in range(count):
        source = pool[index % len(pool)]
        copy = Paper(**{**source.model_dump(), "arxiv_id": f"2611.{index:05d}"})
        translation = sample_translations().get(source.arxiv_id)
        if translation is not None:
            translation = Translation(
                arxiv_id=copy.arxiv_id, language="ZH-HANS", title=translation.title, abstract=translation.abstract
            )
        papers.append(paper_view(copy, translation, ["learning"], translation_wanted=True))
    return papers


class _Text(HTMLParser):
    """The text a reader sees, with the href of every link."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hrefs: list[str] = []
        self.hidden = 0  # inside <style> or <title>: not shown in the body

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")
        self.hidden += tag in ("style", "title")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("style", "title")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def visible(html: str) -> tuple[str, list[str]]:
    """Visible text (white space collapsed, markup decoded) and link targets of an HTML part."""
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\s+", " ", "".join(parser.parts)), parser.hrefs


def render(digest: Digest, **kwargs: int) -> RenderedDigest:
    return DigestRenderer().render(digest, **kwargs)


def test_each_paper_shows_both_titles_authors_subjects_comment_links_and_both_abstracts() -> None:
    paper = paper_by_id("2301.05651")
    digest = make_digest([("reinforcement learning", [view(paper, ["reinforcement learning"])])])

    rendered = render(digest)

    text, hrefs = visible(rendered.html)
    translation = sample_translations()["2301.05651"]
    assert "Mutation Testing of Deep Reinforcement Learning Based on Real Faults" in text
    assert translation.title in text
    assert "作者: Florian Tambon, Vahid Majdinasab, Amin Nikanjam, Foutse Khomh, Giuliano Antonio" in text
    assert "学科: Machine Learning (cs.LG); Software Engineering (cs.SE)" in text
    assert "备注: Accepted to the International Conference of Software Testing (ICST2023)" in text
    assert "英文摘要" in text and paper.abstract[:80] in text
    assert "中文摘要" in text and translation.abstract[:40] in text
    for link in ("https://arxiv.org/abs/2301.05651", "https://arxiv.org/pdf/2301.05651",
                 f"https://arxiv.org/html/2301.05651v{paper.version}"):
        assert link in hrefs
        assert link in rendered.text
    assert translation.title in rendered.text and "Accepted to the International Conference" in rendered.text


def test_the_header_gives_the_day_the_time_it_was_generated_and_the_announcement_in_eastern_and_local_time() -> None:
    papers = [view(p, ["learning"]) for p in sample_papers()[:3]]
    zh = render(make_digest([("learning", papers)]))
    en = render(make_digest([("learning", papers)], language="EN-US", timezone="Europe/Berlin"))

    zh_text, _ = visible(zh.html)
    assert "2026年11月24日 星期二" in zh_text
    assert "2026-11-23 20:00 美东时间 (EST)" in zh_text
    assert "2026-11-24 09:00 (Asia/Shanghai, UTC+8)" in zh_text
    assert "今天共有 3 篇相关文章" in zh_text
    assert "生成时间: 2026-11-24 08:41 (Asia/Shanghai, UTC+8)" in zh_text
    en_text, _ = visible(en.html)
    assert "Tuesday, 24 November 2026" in en_text
    assert "Announced 2026-11-23 20:00 US Eastern (EST)" in en_text
    assert "2026-11-24 02:00 in your time zone (Europe/Berlin, UTC+1)" in en_text
    assert "3 new papers for you today" in en_text
    assert "Generated 2026-11-24 01:41 in your time zone (Europe/Berlin, UTC+1)" in en_text
    for rendered in (zh, en):
        assert rendered.text.splitlines()[1] in visible(rendered.html)[0]


def test_an_unknown_time_zone_falls_back_to_shanghai_for_chinese_readers() -> None:
    digest = make_digest([("learning", [view(sample_papers()[0], ["learning"])])], timezone="Mars/Olympus")

    text, _ = visible(render(digest).html)

    assert "2026-11-24 09:00 (Asia/Shanghai, UTC+8)" in text


def test_each_keyword_has_a_section_with_its_count_or_a_no_result_line() -> None:
    rl = [view(paper_by_id(i), ["reinforcement learning"]) for i in ("2206.10210", "2301.05651")]
    digest = make_digest([("reinforcement learning", rl), ("diffusion policy", [])])

    rendered = render(digest)

    text, _ = visible(rendered.html)
    assert "关键词: reinforcement learning (2 篇)" in text
    assert "关键词: diffusion policy (0 篇)" in text
    assert text.index("diffusion policy (0 篇)") < text.index("今天没有与此关键词匹配的新论文。")
    assert "==== 关键词: diffusion policy (0 篇) ====\n\n今天没有与此关键词匹配的新论文。" in rendered.text


def test_matched_words_are_highlighted_in_the_html_and_marked_in_the_text() -> None:
    paper = paper_by_id("2301.05651")
    digest = make_digest([("reinforcement learning", [view(paper, ["reinforcement learning"])])])

    rendered = render(digest)

    highlighted = re.findall(r'<b class="hit" style="background:#fff1a8[^"]*"[^>]*>(.*?)</b>', rendered.html)
    assert "Reinforcement Learning" in highlighted  # in the title
    assert any(h.lower() == "reinforcement learning" for h in highlighted[1:])  # and in the abstract
    assert "* Mutation Testing of Deep *Reinforcement Learning* Based on Real Faults" in rendered.text


def test_the_same_paper_is_highlighted_for_each_subscriber_by_their_own_keyword() -> None:
    renderer = DigestRenderer()
    paper = paper_by_id("2301.05651")
    first = renderer.render(make_digest([("mutation testing", [view(paper, ["mutation testing"])])]))
    second = renderer.render(make_digest([("real faults", [view(paper, ["real faults"])])]))

    assert re.findall(HIT, first.html)[0] == "Mutation Testing"
    assert re.findall(HIT, second.html)[0] == "Real Faults"


def test_up_to_20_authors_are_all_named_and_longer_lists_end_in_et_al_with_the_count() -> None:
    paper = Paper(**{**sample_papers()[0].model_dump(), "authors": [f"Author {i}" for i in range(1, 25)]})
    twenty = Paper(**{**sample_papers()[1].model_dump(), "authors": [f"Writer {i}" for i in range(1, 21)]})
    digest = make_digest([("learning", [view(paper, []), view(twenty, [])])], language="EN-US")

    rendered = render(digest)

    text, _ = visible(rendered.html)
    named = ", ".join(f"Author {i}" for i in range(1, 21))
    assert f"Authors: {named}, et al. (24 authors)" in text
    assert "Author 21" not in text
    et_al = re.search(r'<a href="([^"]+)"[^>]*>et al\. \(24 authors\)</a>', rendered.html)
    assert et_al and et_al.group(1) == f"https://arxiv.org/abs/{paper.arxiv_id}"
    assert "Writer 19, Writer 20" in text and "(20 authors)" not in text  # twenty names are shown in full
    assert f"{named}, et al. (24 authors)" in rendered.text


def test_subjects_put_the_primary_category_first() -> None:
    paper = Paper(**{**sample_papers()[0].model_dump(), "categories": ["cs.AI", "cs.CL", "cs.LG"],
                     "primary_category": "cs.LG"})

    text, _ = visible(render(make_digest([("x", [view(paper, [])])], language="EN-US")).html)

    expected = "Machine Learning (cs.LG); Artificial Intelligence (cs.AI); Computation and Language (cs.CL)"
    assert f"Subjects: {expected}" in text


def test_latex_in_titles_and_abstracts_reads_as_text() -> None:
    paper = Paper(**{**sample_papers()[0].model_dump(), "title": "A 2.5$\\times$ faster \\textbf{Solver}",
                     "abstract": "We reach $\\rho(E^s) < 1$ with 50\\% fewer steps. "
                                 "Code: \\href{https://x.org}{this url}."})

    rendered = render(make_digest([("x", [view(paper, [])])], language="EN-US"))

    text, _ = visible(rendered.html)
    assert "A 2.5× faster Solver" in text and "$" not in text.split("Abstract")[1].split("manage")[0]
    assert "ρ(Eˢ) < 1" in text and "50% fewer" in text and "Code: this url." in text
    assert "We reach ρ(Eˢ) < 1 with 50% fewer steps." in rendered.text


def test_titles_and_abstracts_with_markup_characters_are_escaped() -> None:
    hostile = Paper(**{
        **sample_papers()[0].model_dump(),
        "title": 'Robust <script>alert("x")</script> & "Quoted" \'Titles\' for x<y',
        "abstract": 'Bounds for a<b && c>d in "graph <neural> networks"; see <a href="http://evil">here</a>.',
        "comment": "Accepted at ICLR <2026> & NeurIPS",
        "authors": ["O'Brien & <Sons>"],
    })
    translation = Translation(arxiv_id=hostile.arxiv_id, language="ZH-HANS", title="<b>粗体</b> & “引号”",
                              abstract='摘要 <img src="http://evil/x.png"> & "更多"')
    paper = paper_view(hostile, translation, ["graph neural networks"], translation_wanted=True)

    rendered = render(make_digest([("graph neural networks", [paper])]))

    assert "<script>" not in rendered.html and "<img" not in rendered.html and 'href="http://evil"' not in rendered.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;Quoted&#34; &#39;Titles&#39;" in rendered.html
    text, hrefs = visible(rendered.html)
    assert 'Robust <script>alert("x")</script> & "Quoted" \'Titles\' for x<y' in text
    assert 'Bounds for a<b && c>d in "graph <neural> networks"; see <a href="http://evil">here</a>.' in text
    assert "Accepted at ICLR <2026> & NeurIPS" in text and "O'Brien & <Sons>" in text
    assert '<b>粗体</b> & “引号”' in text and '摘要 <img src="http://evil/x.png"> & "更多"' in text
    assert "http://evil" not in hrefs
    # The plain-text part shows the characters as they are.
    assert 'Robust <script>alert("x")</script> & "Quoted"' in rendered.text


def test_a_paper_without_translation_says_so_and_the_digest_carries_the_note() -> None:
    missing = paper_view(sample_papers()[0], None, ["learning"], translation_wanted=True)
    digest = make_digest([("learning", [missing])])

    rendered = render(digest)

    text, _ = visible(rendered.html)
    assert "今天部分论文暂时无法翻译,仅显示英文,翻译将在之后补上。" in text
    assert "本文的中文翻译暂不可用。" in text and "中文摘要" not in text
    assert "!! 今天部分论文暂时无法翻译" in rendered.text


def test_an_english_digest_has_no_translation_note() -> None:
    digest = make_digest([("learning", [view(sample_papers()[0], ["learning"], language="EN-US")])], language="EN-US")

    text, _ = visible(render(digest).html)

    assert "Translation" not in text and "Abstract (translated)" not in text


def test_the_footer_links_to_manage_preferences_unsubscribe_and_the_web_copy() -> None:
    rendered = render(make_digest([("learning", [view(sample_papers()[0], ["learning"])])], language="EN-US"))

    _, hrefs = visible(rendered.html)
    footer = rendered.html[rendered.html.index("Manage preferences") - 300:]
    assert LINKS.manage in hrefs and LINKS.unsubscribe in hrefs and hrefs.count(LINKS.archive) >= 2
    assert re.search(r'href="https://digest.example.org/unsubscribe/TOKEN-U"[^>]*>Unsubscribe</a>', footer)
    assert f"Unsubscribe: {LINKS.unsubscribe}" in rendered.text
    assert f"Manage preferences: {LINKS.manage}" in rendered.text
    assert f"View in browser: {LINKS.archive}" in rendered.text


def test_subject_and_preheader_give_the_day_and_count_in_the_subscribers_language() -> None:
    papers = [view(p, ["learning"]) for p in sample_papers()[:2]]
    zh = render(make_digest([("learning", papers), ("robotics", [])]))
    en = render(make_digest([("learning", papers[:1])], language="EN-US"))

    assert zh.subject == "arXiv 每日速递 2026-11-24: 2 篇新论文"
    assert en.subject == "arXiv digest 2026-11-24: 1 new paper"
    assert zh.preheader == "2 篇新论文 · learning (2) · robotics (0)"
    body_start = zh.html.index("</head>")
    assert zh.html.index(zh.preheader) - body_start < 400  # the first text of the body, before the heading
    assert zh.html.index(zh.preheader) < zh.html.index("arXiv 每日速递 · ")
    assert "&zwnj;&nbsp;" in zh.html


def test_the_html_needs_no_external_css_fonts_or_images() -> None:
    rendered = render(make_digest([("learning", many_papers(5))]))

    assert "<link" not in rendered.html and "<img" not in rendered.html and "@import" not in rendered.html
    assert "url(" not in rendered.html
    # The only style blocks are the colour-scheme ones, in <head>; the light look is all inline.
    head, body = rendered.html.split("</head>")
    styles = re.findall(r"<style>(.*?)</style>", head, re.DOTALL)
    assert [css.split("{")[0] for css in styles] == ["@media (prefers-color-scheme:dark)", ":root"]
    assert "<style" not in body
    assert re.findall(r'\ssrc="', rendered.html) == []
    assert '<p class="t" style="margin:0;font-size:16px;line-height:1.4;font-weight:700">' in rendered.html  # inlined


def test_a_60_paper_day_stays_under_the_gmail_clip_and_lists_the_rest_by_title_with_a_link_to_the_web() -> None:
    papers = many_papers(60)
    digest = make_digest([("learning", papers[:40]), ("robotics", papers[40:]), ("quantum", [])])

    rendered = render(digest)

    size = len(rendered.html.encode("utf-8"))
    assert size <= HTML_SIZE_LIMIT < GMAIL_CLIP_BYTES
    assert size > HTML_SIZE_LIMIT * 0.8  # filled, not emptied
    assert 5 <= rendered.papers_in_full < 60 and rendered.papers_in_full + rendered.papers_by_title == 60
    text, hrefs = visible(rendered.html)
    for paper in papers:  # every paper is reachable from the email
        assert paper.abs_url in hrefs
    in_full = [f'<a href="{p.pdf_url}"' in rendered.html for p in papers]
    learning, robotics = in_full[:40], in_full[40:]
    # Each keyword shows its first papers in full (taken in turn), and lists the rest by title.
    assert learning == sorted(learning, reverse=True) and robotics == sorted(robotics, reverse=True)
    assert abs(sum(learning) - sum(robotics)) <= 1 and sum(in_full) == rendered.papers_in_full
    listed = [p for p, full in zip(papers, in_full, strict=True) if not full]
    assert all(re.search(rf'<li\b[^>]*>\s*<a href="{re.escape(p.abs_url)}"', rendered.html) for p in listed)
    assert "网页版完整内容" in text and "更多论文(邮件篇幅有限,仅列标题):" in text
    assert "关键词: learning (40 篇)" in text and "关键词: robotics (20 篇)" in text
    assert "今天共有 60 篇相关文章" in text
    # The text part carries every paper in full.
    assert all(p.pdf_url in rendered.text for p in papers)


def test_a_huge_day_lists_as_many_titles_as_fit_and_counts_the_rest() -> None:
    papers = many_papers(1200)

    rendered = render(make_digest([("learning", papers[:1100]), ("robotics", papers[1100:])]))

    assert len(rendered.html.encode("utf-8")) <= HTML_SIZE_LIMIT
    text, hrefs = visible(rendered.html)
    hidden = [int(n) for n in re.findall(r"……另有 (\d+) 篇,见网页版", text)]
    assert len(hidden) == 2  # each section says how many it could not list
    assert "关键词: robotics (100 篇)" in text
    assert text.index("关键词: robotics") < text.rindex("……另有 100 篇,见网页版")
    listed = len(re.findall(r"<li\b", rendered.html))
    assert rendered.papers_in_full + listed + sum(hidden) == 1200
    assert hrefs.count(LINKS.archive) >= 4


def test_a_small_size_limit_still_shows_the_first_papers_in_full() -> None:
    papers = many_papers(6)
    unlimited = render(make_digest([("learning", papers)]))
    limit = len(unlimited.html.encode()) - 1

    rendered = render(make_digest([("learning", papers)]), size_limit=limit)

    assert len(rendered.html.encode()) <= limit
    assert rendered.papers_in_full == 5 and rendered.papers_by_title == 1
    assert f'<a href="{papers[4].pdf_url}"' in rendered.html and f'<a href="{papers[5].pdf_url}"' not in rendered.html


def test_rendering_a_digest_again_gives_the_same_email() -> None:
    renderer = DigestRenderer()
    digest = make_digest([("learning", many_papers(4))])

    first, second = renderer.render(digest), renderer.render(dataclasses.replace(digest))

    assert first == second


def test_the_text_part_wraps_both_abstracts_for_an_80_column_terminal() -> None:
    rendered = render(make_digest([("learning", many_papers(4))]))

    abstract_lines = [line for line in rendered.text.splitlines() if line.startswith("    ")]
    columns = [sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line) for line in abstract_lines]
    assert len(abstract_lines) > 20 and max(columns) <= 78
    assert any(unicodedata.east_asian_width(line[4]) == "W" for line in abstract_lines)  # Chinese wrapped too
    chinese = sample_translations()[sample_papers()[0].arxiv_id].abstract
    assert chinese[:30] in rendered.text.replace("\n    ", "")


def test_many_renderers_and_subscribers_compile_the_template_once() -> None:
    compiled_email()  # compiled (or already compiled) for this process
    before = _compiled_email.cache_info()

    for number in range(30):
        DigestRenderer().render(make_digest([("learning", many_papers(number % 5 + 1))]))

    after = _compiled_email.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 30


def test_a_published_paper_shows_its_journal_reference_and_links_its_doi() -> None:
    paper = Paper(**{**sample_papers()[0].model_dump(), "journal_ref": "Softw. Test. Verif. Reliab. 32(4), 2022",
                     "doi": "10.1002/stvr.1815"})

    rendered = render(make_digest([("x", [view(paper, [])])], language="EN-US"))

    text, hrefs = visible(rendered.html)
    assert "Journal reference: Softw. Test. Verif. Reliab. 32(4), 2022" in text
    assert "https://doi.org/10.1002/stvr.1815" in hrefs
    assert "DOI:   https://doi.org/10.1002/stvr.1815" in rendered.text


def test_the_html_declares_light_and_dark_and_keeps_its_dark_block_in_the_head() -> None:
    missing = paper_view(sample_papers()[0], None, ["learning"], translation_wanted=True)
    rendered = render(make_digest([("learning", [*many_papers(3), missing]), ("quantum", [])]))

    head, body = rendered.html.split("</head>")
    assert '<meta name="color-scheme" content="light dark">' in head
    assert '<meta name="supported-color-schemes" content="light dark">' in head
    (dark,) = re.findall(r"<style>@media \(prefers-color-scheme:dark\)\{(.*)\}</style>", head)
    assert "!important" in dark  # it must win over the inline light colours
    # Every class the dark block styles is still on the elements it is for.
    classes = set(re.findall(r"\.([a-z][\w-]*)", dark))
    on_elements = {name for names in re.findall(r'class="([^"]*)"', body) for name in names.split()}
    assert classes == on_elements


def test_the_reference_day_fits_whole_in_one_html_part() -> None:
    references = reference_day()
    papers = [
        paper_view(
            Paper(arxiv_id=r.paper.arxiv_id, version=1, title=r.paper.title, abstract=r.paper.abstract,
                  authors=list(r.paper.authors), categories=list(r.paper.categories),
                  primary_category=r.paper.primary_category),
            Translation(arxiv_id=r.paper.arxiv_id, language="ZH-HANS", title=r.title_zh, abstract=r.abstract_zh),
            ["reinforcement learning"], translation_wanted=True,
        )
        for r in references
    ]

    rendered = render(make_digest([("reinforcement learning", papers), ("diffusion policy", [])]))

    assert rendered.papers_in_full == 24 and rendered.papers_by_title == 0
    assert len(rendered.html.encode()) <= HTML_SIZE_LIMIT
    text, _ = visible(rendered.html)
    assert all(" ".join(readable(r.abstract_zh).split()) in text for r in references)
