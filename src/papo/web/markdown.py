"""Messages as safe HTML: markdown-it renders (raw HTML disabled), nh3 keeps only harmless tags,
attributes and URL schemes. Whatever a user or a model writes, the output cannot run script."""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

MAX_RENDERED_CHARS = 100_000  # a message longer than this renders as its first part (the rest is in exports)
ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li",
    "a", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title", "target"}, "code": {"class"}, "th": {"style"}, "td": {"style"}}

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True}).enable(
    ["table", "strikethrough"]
)


def render(content: str) -> str:
    html = _markdown.render(content[:MAX_RENDERED_CHARS])
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        filter_style_properties={"text-align"},
    )
