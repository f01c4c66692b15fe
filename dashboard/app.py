"""The gandissect dashboard: a Streamlit multipage app (st.navigation) over the DuckDB store.

Reads the store named by env GANDISSECT_DB (default "gandissect.duckdb") with short read-only
connections (`dashboard.queries`); writes only unit flags (Flags, Unit and Realism pages). Pages live in
`dashboard/app_pages/`. Every script run first checks the request's Host header: only loopback names
and addresses (and $GANDISSECT_ALLOWED_HOSTS) are served, so a page of another site whose name was
rebound to 127.0.0.1 (DNS rebinding) gets a refusal and nothing else. Start it with the CLI (binds to
127.0.0.1):

    gandissect dashboard --port 8501
    # or: GANDISSECT_DB=gandissect.duckdb streamlit run dashboard/app.py --server.address 127.0.0.1
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import queries, ui  # noqa: E402
from db import store  # noqa: E402

PAGES_DIR = Path(__file__).resolve().parent / "app_pages"
REFUSAL = "Refused: this dashboard answers only requests addressed to localhost (Host header {host})."

# An emoji favicon is drawn as an inline SVG; a ":material/..:" page_icon would be fetched from
# fonts.gstatic.com, which fails offline (issue 18). The nav icons use the bundled symbol font.
st.set_page_config(page_title="gandissect", page_icon="🔬", layout="wide")


def _request_host() -> str | None:
    """The Host header of the browser's connection; None where there is no request (AppTest)."""
    try:
        headers = st.context.headers
    except Exception:  # no script run context
        return None
    return headers.get("Host") if headers is not None and len(headers) else None


_host = _request_host()
if _host is not None and not ui.host_allowed(_host, ui.allowed_hosts()):
    st.error(REFUSAL.format(host=ui.md_escape(_host)))  # no page, no query, no flag write runs
    st.stop()


def page(name: str, title: str, icon: str, **kw) -> st.Page:
    return st.Page(PAGES_DIR / f"{name}.py", title=title, icon=icon, url_path=name, **kw)


pages = {
    "Browse": [
        page("overview", "Overview", ":material/home:", default=True),
        page("units", "Units", ":material/grid_view:"),
        page("unit", "Unit", ":material/search:", visibility="hidden"),
        page("compare", "Compare", ":material/compare_arrows:"),
        page("causal", "Causal", ":material/target:"),
        page("realism", "Realism", ":material/healing:"),
        page("classes", "Classes", ":material/category:"),
        page("photos", "Photos", ":material/photo_camera:"),
    ],
    "Tools": [
        page("paint", "Paint", ":material/brush:"),
        page("sql", "SQL", ":material/database:"),
        page("flags", "Flags", ":material/flag:"),
        page("model_cards", "Model cards", ":material/description:"),
    ],
}
current = st.navigation(pages)
st.sidebar.caption(f"store: `{queries.db_path()}`")
try:
    with queries.page_scope():  # one short read-only connection for the page's queries
        current.run()
except store.StoreLocked:
    # read() already retried for a while: a job holds the store for longer; say so, never a traceback
    st.info("A job is writing to the store right now; this page will show as soon as it is free.", icon=":material/hourglass_top:")
    if st.button("Try again"):
        st.rerun()
