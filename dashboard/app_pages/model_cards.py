"""Model cards: the markdown cards of the bundled models (`ingest/zoo/*.md`, or the folder named by
$GANDISSECT_MODEL_CARDS), with the figures they reference from that folder."""
from __future__ import annotations

import os
import re
from pathlib import Path

import streamlit as st

from dashboard import ui

ZOO = Path(os.environ.get("GANDISSECT_MODEL_CARDS") or Path(__file__).resolve().parents[2] / "ingest" / "zoo")
# a markdown image ![caption](file), or an image file named in backticks (`village-gan-samples.png`),
# which the cards use for their sample grids: both are drawn from the card's folder
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)|`([\w./-]+\.(?:png|jpe?g|webp))`")

st.title("Model cards")
cards = sorted(ZOO.glob("*.md"))
if not cards:
    st.info("No model cards yet: training a bundled model (`gandissect train gan`) writes one to ingest/zoo/.")
    st.stop()

ui.generated_vs_rendered(ui.db(), "cards")
card = st.selectbox("card", cards, format_func=lambda p: p.stem, key="cards_card")
text = card.read_text(encoding="utf-8")
pos = 0
for m in IMAGE.finditer(text):  # markdown between figures, figures from files beside the card
    if text[pos:m.start()].strip():
        st.markdown(text[pos:m.start()])
    name, caption = (m.group(2), m.group(1) or None) if m.group(2) else (m.group(3), m.group(3))
    target = (card.parent / name).resolve()
    if target.is_file() and ZOO.resolve() in target.parents:  # only files of the zoo folder
        st.image(str(target), caption=caption)
    else:
        st.caption(f"(figure {ui.md_escape(name)} not found)")
    pos = m.end()
st.markdown(text[pos:])
