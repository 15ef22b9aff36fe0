"""The evaluation card's Markdown as safe HTML, for ``GET /v1/jobs/{id}/card?format=html``."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

DETAILS_SUMMARY = re.compile(r"<p>&lt;details&gt;\s*&lt;summary&gt;(.*?)&lt;/summary&gt;</p>")
ALIGN_STYLE = re.compile(r' style="text-align:\s*(left|right|center);?"')
RELATIVE_SRC = re.compile(r'src="(?!https?:|/)([^"]+)"')


def render_card_html(markdown: str, artifact_base: str) -> str:
    """The card's Markdown body as HTML (front matter dropped, images pointing at the job's
    artifact URLs)."""
    body = markdown
    if body.startswith("---"):
        end = body.find("\n---", 3)
        body = body[end + 4 :] if end != -1 else body
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(body)
    # raw HTML stays escaped (the card holds user-chosen names); only the card's own folding tags
    # come back
    html = DETAILS_SUMMARY.sub(r"<details><summary>\1</summary>", html)
    html = html.replace("<p>&lt;details&gt;</p>", "<details>")
    html = html.replace("<p>&lt;/details&gt;</p>", "</details>")
    html = ALIGN_STYLE.sub(r' class="align-\1"', html)
    return RELATIVE_SRC.sub(lambda m: f'src="{artifact_base}{m[1]}"', html)
