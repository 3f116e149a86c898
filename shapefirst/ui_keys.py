"""The keys of what ShapeFirst's nodes send to the browser, read from the table the JS reads too.

``js/ui_keys.json`` is the single table: the ``ui`` dict keys of node outputs and the websocket
events. Node code uses these constants, never the literal strings.
"""

from __future__ import annotations

import json
from pathlib import Path

TABLE_PATH = Path(__file__).resolve().parent.parent / "js" / "ui_keys.json"
TABLE: dict = json.loads(TABLE_PATH.read_text(encoding="utf-8"))

CURVES: str = TABLE["ui"]["curves"]
GUIDANCE: str = TABLE["ui"]["guidance"]
TOKENS: str = TABLE["ui"]["tokens"]
ATTENTION: str = TABLE["ui"]["attention"]
ATTENTION_KL: str = TABLE["ui"]["attention_kl"]
GUIDANCE_EVENT: str = TABLE["events"]["guidance"]
NODES: dict[str, list[str]] = TABLE["nodes"]
