"""The web pages' strings in English and Simplified Chinese, and picking one for a request."""

from __future__ import annotations

from collections.abc import Mapping

from newsletter.keywords import KeywordSyntaxError, SyntaxProblem
from newsletter.subscribers import Problem, ProblemCode

ENGLISH = "en"
CHINESE = "zh-Hans"
PAGE_LANGUAGES = {ENGLISH: "English", CHINESE: "简体中文"}

STRINGS: dict[str, dict[str, str]] = {
    ENGLISH: {
        "site_name": "arXiv digest",
        "switch_language": "Language",
        "skip_to_content": "Skip to content",
        "subscribe_title": "Subscribe to the arXiv digest",
        "subscribe_intro": "Every arXiv announcement day, one email with the new papers that match your keywords, "
        "in English and in your language.",
        "email": "Email address",
        "keywords": "Keywords, one per line",
        "keywords_help": "A keyword is a phrase (plurals and hyphens are handled). You may also use arXiv search "
        "syntax: \"quoted phrases\", AND, OR, ANDNOT, parentheses, the fields ti: abs: au: cat: and a trailing * "
        "for a prefix. At most 20 keywords.",
        "examples": "Examples",
        "language": "Digest language",
        "language_help": "Titles and abstracts are translated into this language, beside the English.",
        "language_help_english": "The digest is in English only: nothing is translated.",
        "timezone": "Time zone",
        "timezone_help": "Dates in the digest are shown in this time zone.",
        "subscribe_button": "Subscribe",
        "preview_button": "Check keywords",
        "preview_title": "Matches over the last {days} announcement days",
        "preview_none": "No papers are stored yet, so no preview is possible.",
        "preview_count": "{count} papers",
        "preview_count_one": "1 paper",
        "preview_title_one": "Matches on the last announcement day",
        "fix_errors": "Please correct the fields marked below.",
        "check_inbox_title": "Check your inbox",
        "check_inbox": "If {email} can receive mail, a message with a confirmation link is on its way. "
        "The link is valid for 7 days. Nothing is sent until you confirm.",
        "already_sent_title": "A message was sent already",
        "already_sent": "A message with the link for {email} was sent at {time} ({zone}). If it has not arrived, "
        "look in your spam folder. You can ask for a new one after {resend}.",
        "capped_title": "No more mail for now",
        "capped": "Several confirmation mails went to this mailbox, its domain or from your connection within "
        "the last hour, so no more is sent for now. Nothing was changed. Please try again later.",
        "mail_failed_title": "Mail could not be sent",
        "mail_failed": "We could not send the confirmation mail just now. Please try again in a few minutes.",
        "confirm_title": "Confirm your subscription",
        "confirm_text": "Press the button to start receiving the digest at {email}.",
        "confirm_button": "Confirm my subscription",
        "confirmed_title": "Subscription confirmed",
        "confirmed": "{email} will receive the next digest.",
        "confirm_changes": "These preferences take effect when you confirm:",
        "already_confirmed_title": "Already confirmed",
        "already_confirmed": "{email} is subscribed already: this link has nothing left to do.",
        "manage_title": "Your digest preferences",
        "manage_for": "Preferences for {email}",
        "pause": "Pause the digest (keep my keywords)",
        "save_button": "Save",
        "saved": "Your preferences are saved.",
        "status_pending": "Your subscription is not confirmed yet: use the link in the confirmation mail.",
        "status_unsubscribed": "You are unsubscribed. Subscribe again from the home page if you like.",
        "delete_title": "Delete my data",
        "delete_text": "Removes your address, keywords and delivery history. Digests already sent are counted "
        "anonymously only. This cannot be undone.",
        "delete_confirm": "Yes, delete all my data",
        "delete_button": "Delete my data",
        "deleted_title": "Your data is deleted",
        "deleted": "We no longer hold your address or your keywords.",
        "unsubscribe_title": "Unsubscribe",
        "unsubscribe_text": "Stop sending the arXiv digest to {email}?",
        "unsubscribe_button": "Unsubscribe",
        "manage_unsubscribe_title": "Stop the digest",
        "manage_unsubscribe_text": "One click stops every digest to {email}. Your keywords stay, so you can "
        "undo it on the next page.",
        "after_unsubscribe_link": "Your preferences, or delete your data",
        "unsubscribed_title": "You are unsubscribed",
        "unsubscribed": "{email} will receive no more digests.",
        "resubscribe_button": "I changed my mind: subscribe again",
        "resubscribed_title": "Welcome back",
        "resubscribed": "{email} will receive the digest again.",
        "manage_link": "Change your preferences",
        "bad_link_title": "This link is not valid",
        "link_tampered": "This link is not valid: it may have been altered or cut short.",
        "link_expired": "This link has expired.",
        "link_wrong_page": "This link is not valid for this page.",
        "link_gone": "This link belongs to a subscription that no longer exists.",
        "link_other_day": "This link is not valid for this day.",
        "link_stale": "This link is no longer valid: the subscription changed after it was sent (an unsubscribe, "
        "or a newer mail). Subscribe again to get a new link.",
        "bad_link_help": "Nothing was changed. Use the newest link from your mail, or subscribe again.",
        "no_digest_title": "No digest for this day",
        "no_digest": "No digest was sent to you for this announcement day.",
        "csrf_title": "Please try again",
        "csrf": "The form had expired or did not come from this site. Nothing was changed. "
        "Reload the page and submit it again.",
        "rate_title": "Too many requests",
        "rate": "Please wait a minute before trying again.",
        "too_large_title": "Request too large",
        "too_large": "The form you sent is larger than this site accepts.",
        "not_found_title": "Page not found",
        "not_found": "There is no page at this address.",
        "error_title": "Something went wrong",
        "home": "Back to the subscription page",
        # One per subscribers.ProblemCode, with its parameters.
        "email_line_break": "This email address is not valid: it cannot contain line breaks.",
        "email_no_at_sign": "This email address is not valid: {detail}",
        "email_local_part": "This email address is not valid: {detail}",
        "email_domain": "This email address is not valid: {detail}",
        "email_trailing_text": "This email address is not valid: {detail}",
        "email_invalid": "This email address is not valid: {detail}",
        "email_not_ascii": "This email address cannot be used: letters beyond ASCII before the @-sign cannot be "
        "mailed from this site. Please use another address.",
        "keyword_syntax": "Line {line}, character {column}: {message}",
        "keywords_none": "Give at least one keyword.",
        "keywords_text_too_long": "The keywords are longer than this site accepts.",
        "keywords_too_many": "Too many keywords: {count} given, at most {limit} allowed.",
        "language_unknown": "Choose a language from the list.",
        "timezone_unknown": "Choose a time zone from the list.",
        "js_checking": "Checking…",
        "js_ok": "All keywords are valid.",
        # Feedback links on the cards, the manage page's feedback list and private feed.
        "feedback_title_more": "More papers like this one?",
        "feedback_title_less": "Fewer papers like this one?",
        "feedback_text_more": "Press the button and papers close to this one will be shown first in your next digests.",
        "feedback_text_less": "Press the button and papers close to this one will be shown last in your next digests.",
        "feedback_button_more": "Yes, more like this",
        "feedback_button_less": "Yes, this is not for me",
        "feedback_saved_title": "Thank you",
        "feedback_saved_more": "Noted: more papers like “{title}”.",
        "feedback_saved_less": "Noted: fewer papers like “{title}”.",
        "feedback_manage": "See or clear your feedback",
        "feedback_unknown": "This link names a paper that was not in your digests.",
        "feedback_list_title": "Your feedback",
        "feedback_list_text": "Papers close to those you liked are shown first in each keyword's section, papers close "
        "to those you refused last.",
        "feedback_none": "You have not given feedback yet: use “More like this” or “Not for me” under a paper.",
        "feedback_verdict_more": "More like this",
        "feedback_verdict_less": "Not for me",
        "feedback_forget": "Forget",
        "feedback_clear_all": "Clear all feedback",
        "feedback_cleared": "Your feedback is cleared.",
        "feed_title": "Your private feed",
        "feed_text": "Your digests as an Atom feed, for a feed reader. The address is private: whoever has it can "
        "read your digests. It works until you unsubscribe.",
        "feed_gone": "You are unsubscribed, so your feed is switched off.",
        "feed_refused": "This feed is switched off: its subscriber unsubscribed.",
    },
    CHINESE: {
        "site_name": "arXiv 每日速递",
        "switch_language": "语言",
        "skip_to_content": "跳到正文",
        "subscribe_title": "订阅 arXiv 每日速递",
        "subscribe_intro": "每个 arXiv 公告日，我们会发送一封邮件，列出与您的关键词匹配的新论文，"
        "附英文原文和您选择的语言的译文。",
        "email": "电子邮箱",
        "keywords": "关键词（每行一个）",
        "keywords_help": "关键词是一个短语（自动处理复数和连字符）。也可以使用 arXiv 检索语法："
        "\"带引号的短语\"、AND、OR、ANDNOT、括号、字段前缀 ti: abs: au: cat:，"
        "以及末尾的 * 表示前缀匹配。最多 20 个关键词。",
        "examples": "示例",
        "language": "译文语言",
        "language_help": "标题和摘要会翻译成这种语言，与英文并列显示。",
        "language_help_english": "速递只有英文，不做翻译。",
        "timezone": "时区",
        "timezone_help": "邮件中的日期按此时区显示。",
        "subscribe_button": "订阅",
        "preview_button": "检查关键词",
        "preview_title": "最近 {days} 个公告日的匹配数",
        "preview_none": "尚未存储任何论文，暂时无法预览。",
        "preview_count": "{count} 篇论文",
        "preview_count_one": "1 篇论文",
        "preview_title_one": "最近一个公告日的匹配数",
        "fix_errors": "请修改下面标出的内容。",
        "check_inbox_title": "请查收邮件",
        "check_inbox": "如果 {email} 能够接收邮件，一封带确认链接的邮件正在发送中。链接 7 天内有效。"
        "确认之前我们不会发送任何速递。",
        "already_sent_title": "邮件已经发出",
        "already_sent": "已于 {time}（{zone}）向 {email} 发送了一封带链接的邮件。如未收到，请查看垃圾邮件文件夹。"
        "{resend} 之后可以重新申请。",
        "capped_title": "暂时不再发送邮件",
        "capped": "过去一小时内已向此邮箱、其域名或从您的网络发送了多封确认邮件，暂时不再发送。"
        "没有做任何更改。请稍后再试。",
        "mail_failed_title": "邮件发送失败",
        "mail_failed": "暂时无法发送确认邮件，请几分钟后再试。",
        "confirm_title": "确认订阅",
        "confirm_text": "点击按钮，开始向 {email} 发送每日速递。",
        "confirm_button": "确认订阅",
        "confirmed_title": "订阅已确认",
        "confirmed": "{email} 将收到下一期速递。",
        "confirm_changes": "确认后以下设置生效：",
        "already_confirmed_title": "已经确认",
        "already_confirmed": "{email} 已经订阅，此链接无需再操作。",
        "manage_title": "订阅设置",
        "manage_for": "{email} 的订阅设置",
        "pause": "暂停发送（保留关键词）",
        "save_button": "保存",
        "saved": "设置已保存。",
        "status_pending": "您的订阅尚未确认：请使用确认邮件中的链接。",
        "status_unsubscribed": "您已退订。如需要，可在首页重新订阅。",
        "delete_title": "删除我的数据",
        "delete_text": "删除您的邮箱地址、关键词和发送记录。已发送的速递只保留匿名计数。此操作无法撤销。",
        "delete_confirm": "是的，删除我的全部数据",
        "delete_button": "删除我的数据",
        "deleted_title": "您的数据已删除",
        "deleted": "我们不再保存您的邮箱地址和关键词。",
        "unsubscribe_title": "退订",
        "unsubscribe_text": "不再向 {email} 发送 arXiv 每日速递?",
        "unsubscribe_button": "退订",
        "manage_unsubscribe_title": "停止接收速递",
        "manage_unsubscribe_text": "点击一次即停止向 {email} 发送任何速递。关键词会保留，您可以在下一页撤销。",
        "after_unsubscribe_link": "订阅设置，或删除我的数据",
        "unsubscribed_title": "您已退订",
        "unsubscribed": "{email} 将不再收到速递。",
        "resubscribe_button": "我改主意了：重新订阅",
        "resubscribed_title": "欢迎回来",
        "resubscribed": "{email} 将重新收到速递。",
        "manage_link": "修改订阅设置",
        "bad_link_title": "链接无效",
        "link_tampered": "此链接无效：可能被修改或不完整。",
        "link_expired": "此链接已过期。",
        "link_wrong_page": "此链接不适用于此页面。",
        "link_gone": "此链接对应的订阅已不存在。",
        "link_other_day": "此链接不适用于这一天。",
        "link_stale": "此链接已失效：发送之后订阅有了变化（已退订，或有更新的邮件）。请重新订阅以获取新链接。",
        "bad_link_help": "没有做任何更改。请使用邮件中最新的链接，或重新订阅。",
        "no_digest_title": "这一天没有速递",
        "no_digest": "这个公告日没有向您发送速递。",
        "csrf_title": "请重试",
        "csrf": "表单已过期或并非来自本站。没有做任何更改。请刷新页面后重新提交。",
        "rate_title": "请求过于频繁",
        "rate": "请稍等一分钟再试。",
        "too_large_title": "请求过大",
        "too_large": "您提交的表单超出了本站接受的大小。",
        "not_found_title": "页面不存在",
        "not_found": "此地址没有页面。",
        "error_title": "出错了",
        "home": "返回订阅页面",
        "email_line_break": "邮箱地址无效：不能包含换行。",
        "email_no_at_sign": "邮箱地址无效：缺少 @ 符号。",
        "email_local_part": "邮箱地址无效：@ 之前的部分有误。",
        "email_domain": "邮箱地址无效：@ 之后的域名部分有误。",
        "email_trailing_text": "邮箱地址无效：地址后面还有多余的内容，请只填写一个地址。",
        "email_invalid": "邮箱地址无效，请检查后重新填写。",
        "email_not_ascii": "无法使用此邮箱地址：@ 之前含有非 ASCII 字符，本站无法向其发送邮件。请换一个地址。",
        "keyword_syntax": "第 {line} 行，第 {column} 个字符：{message}",
        "keywords_none": "请至少填写一个关键词。",
        "keywords_text_too_long": "关键词内容超出了本站接受的长度。",
        "keywords_too_many": "关键词过多：填写了 {count} 个，最多 {limit} 个。",
        "language_unknown": "请从列表中选择语言。",
        "timezone_unknown": "请从列表中选择时区。",
        "js_checking": "正在检查…",
        "js_ok": "所有关键词均有效。",
        "feedback_title_more": "多推荐与这篇类似的论文？",
        "feedback_title_less": "少推荐与这篇类似的论文？",
        "feedback_text_more": "点击按钮后，与这篇相近的论文会在之后的速递中排在前面。",
        "feedback_text_less": "点击按钮后，与这篇相近的论文会在之后的速递中排在后面。",
        "feedback_button_more": "是的，多推荐类似的",
        "feedback_button_less": "是的，我不感兴趣",
        "feedback_saved_title": "谢谢",
        "feedback_saved_more": "已记录：多推荐与“{title}”类似的论文。",
        "feedback_saved_less": "已记录：少推荐与“{title}”类似的论文。",
        "feedback_manage": "查看或清除您的反馈",
        "feedback_unknown": "此链接指向的论文不在您的速递中。",
        "feedback_list_title": "您的反馈",
        "feedback_list_text": "在每个关键词的栏目中，与您喜欢的论文相近的排在前面，与您不感兴趣的相近的排在后面。",
        "feedback_none": "您还没有给出反馈：可以使用论文下方的“多推荐类似的”或“不感兴趣”。",
        "feedback_verdict_more": "多推荐类似的",
        "feedback_verdict_less": "不感兴趣",
        "feedback_forget": "删除",
        "feedback_clear_all": "清除全部反馈",
        "feedback_cleared": "您的反馈已清除。",
        "feed_title": "您的私人订阅源",
        "feed_text": "以 Atom 订阅源的形式阅读您的速递，适用于 RSS 阅读器。此地址是私密的：拥有它的人都能读到您的速递。"
        "退订之前一直有效。",
        "feed_gone": "您已退订，订阅源已关闭。",
        "feed_refused": "此订阅源已关闭：订阅者已退订。",
    },
}


# The manage page's digest schedule and extras (templates/web/_digest_choices.html), kept together.
DIGEST_CHOICE_STRINGS: dict[str, dict[str, str]] = {
    ENGLISH: {
        "frequency": "How often",
        "frequency_daily": "Every announcement day",
        "frequency_weekly": "Once a week",
        "weekday": "Weekly digest on",
        "frequency_help": "A weekly digest goes out with the first announcement on or after the day you pick "
        "and holds every paper matched since your previous digest, each once.",
        "weekday_mon": "Monday", "weekday_tue": "Tuesday", "weekday_wed": "Wednesday", "weekday_thu": "Thursday",
        "weekday_fri": "Friday", "weekday_sat": "Saturday", "weekday_sun": "Sunday",
        "empty_day_note": "Send a short note when an announcement matched none of my keywords",
        "updates": "Tell me when a paper I was sent gets a new version, a journal reference or a DOI",
        "frequency_unknown": "Choose daily or weekly.",
        "weekday_unknown": "Choose a weekday from the list.",
    },
    CHINESE: {
        "frequency": "发送频率",
        "frequency_daily": "每个公告日",
        "frequency_weekly": "每周一次",
        "weekday": "每周速递的发送日",
        "frequency_help": "每周速递在您选定的那天当天或之后的第一次公告时发送，"
        "包含自上一期以来匹配的全部论文，每篇只出现一次。",
        "weekday_mon": "星期一", "weekday_tue": "星期二", "weekday_wed": "星期三", "weekday_thu": "星期四",
        "weekday_fri": "星期五", "weekday_sat": "星期六", "weekday_sun": "星期日",
        "empty_day_note": "公告中没有与我的关键词匹配的论文时，发一封简短的提示",
        "updates": "之前发给我的论文有新版本、期刊引用或 DOI 时告诉我",
        "frequency_unknown": "请选择每天或每周。",
        "weekday_unknown": "请从列表中选择星期几。",
    },
}
for _language, _strings in DIGEST_CHOICE_STRINGS.items():
    STRINGS[_language].update(_strings)


# The keyword parser's problems (newsletter.keywords.SyntaxProblem) in Chinese; English is the parser's own.
KEYWORD_MESSAGES = {
    CHINESE: {
        SyntaxProblem.TOO_LONG: "关键词超过 {limit} 个字符",
        SyntaxProblem.EMPTY: "关键词为空",
        SyntaxProblem.UNCLOSED_QUOTE: "引号没有闭合",
        SyntaxProblem.UNKNOWN_FIELD: "未知字段 '{field}'",
        SyntaxProblem.NOT_OPERATOR: "NOT 不是运算符，请使用 ANDNOT",
        SyntaxProblem.UNBALANCED: "括号不配对",
        SyntaxProblem.MISSING_OPERATOR: "词语之间缺少运算符（AND、OR 或 ANDNOT）",
        SyntaxProblem.TERM_AFTER_OPERATOR: "运算符 {operator} 后面需要一个词语",
        SyntaxProblem.TERM_BEFORE_OPERATOR: "运算符 {operator} 前面需要一个词语",
        SyntaxProblem.EXPECTED_TERM: "此处需要一个词语",
        SyntaxProblem.TERM_AFTER_FIELD: "字段 {field}: 后面需要一个词语",
        SyntaxProblem.EMPTY_PARENTHESES: "括号内为空",
        SyntaxProblem.EMPTY_QUOTE: "引号内为空",
        SyntaxProblem.INNER_WILDCARD: "通配符 * 只能放在词语末尾",
        SyntaxProblem.INVALID_CATEGORY: "无效的分类 '{category}'",
        SyntaxProblem.NO_LETTERS: "词语 '{term}' 不含字母或数字",
        SyntaxProblem.SHORT_PREFIX: "前缀 '{term}' 太短，* 前至少需要 {limit} 个字母",
        SyntaxProblem.UNREADABLE: "无法读取的关键词（{detail}）",
        SyntaxProblem.CONTROL_CHARACTER: "不允许使用不可见的控制字符 {character}",
    }
}


def keyword_message(language: str, error: KeywordSyntaxError) -> str:
    """What is wrong with a keyword, in `language` (the parser's English where there is no translation)."""
    text = KEYWORD_MESSAGES.get(language, {}).get(error.problem)
    return text.format(**error.params) if text else error.message


class Translator:
    """The strings of one page language: `t("key", name=value)` in templates."""

    def __init__(self, language: str) -> None:
        self.language = language if language in STRINGS else ENGLISH
        self._strings = STRINGS[self.language]

    def __call__(self, key: str, **values: object) -> str:
        text = self._strings.get(key) or STRINGS[ENGLISH][key]
        return text.format(**values) if values else text

    def problem(self, problem: Problem) -> str:
        """A subscriber service problem in this language."""
        params = dict(problem.params)
        syntax = params.get("syntax")
        if problem.code == ProblemCode.KEYWORD_SYNTAX and isinstance(syntax, KeywordSyntaxError):
            params["message"] = keyword_message(self.language, syntax)
        return self(problem.code.value, **params)

    def count(self, key: str, number: int, name: str = "count") -> str:
        """The string for `number` of something: `key_one` for exactly one, when there is such a string."""
        singular = f"{key}_one"
        if number == 1 and singular in STRINGS[ENGLISH]:
            return self(singular)
        return self(key, **{name: number})


def parse_language_tag(tag: str | None) -> str | None:
    """The page language a tag such as zh-CN, zh-Hans or en-GB asks for, if we have it."""
    if not tag:
        return None
    tag = tag.strip().lower()
    if tag.startswith("zh"):
        # Traditional-script readers get English rather than the wrong script.
        return None if any(part in tag for part in ("hant", "-tw", "-hk", "-mo")) else CHINESE
    if tag.startswith("en"):
        return ENGLISH
    return None


def negotiate(accept_language: str | None) -> str:
    """The best page language for an Accept-Language header (English when nothing fits)."""
    ranked: list[tuple[float, int, str]] = []
    for order, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        language = parse_language_tag(tag)
        if language and quality > 0:
            ranked.append((-quality, order, language))
    return min(ranked)[2] if ranked else ENGLISH


def page_language(query: Mapping[str, str], cookies: Mapping[str, str], accept_language: str | None) -> str:
    """?lang= first, then the remembered choice, then the browser's preference."""
    for choice in (query.get("lang"), cookies.get("lang")):
        if choice in STRINGS:
            return choice
    return negotiate(accept_language)
