"""common/explain/render.py: highlighted tokens."""

from __future__ import annotations

import re

from common.explain.render import highlighted


def test_tokens_are_escaped_coloured_by_sign_and_word_pieces_joined():
    out = highlighted(["<b>", "play", "##ing", "bad"], [0.5, -1.0, 0.0, 1.0], scale=1.0)
    assert "&lt;b&gt;" in out and "<b>" not in out
    styles = re.findall(r"style='background:([^']+)'", out)
    assert styles == [
        "rgba(220,40,40,0.50)",
        "rgba(40,90,220,1.00)",
        "rgba(40,90,220,0.00)",
        "rgba(220,40,40,1.00)",
    ]
    assert "</span><span class='tok' title='+0.0000'" in out  # "##ing" follows "play" directly
    assert re.sub(r"<[^>]+>", "", out) == "&lt;b&gt; playing bad"
