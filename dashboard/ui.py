"""Widgets shared by the dashboard pages: the empty-store message, model / layer / dissection pickers
that remember the choice across pages, unit cards, flag forms and number formatting.

Reads the store through `dashboard.queries` (and writes flags through `db.store.set_flag` /
`clear_flag`, one short transaction each); no SQL here.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence
from urllib.parse import urlencode

import polars as pl
import streamlit as st

from dashboard import queries
from dashboard.hostcheck import allowed_hosts, host_allowed  # noqa: F401 (the app's Host check)
from db import store

EMPTY_MSG = "Nothing computed yet: run `gandissect run` (or `make demo`) to fill the store, then reload."
UNIT_PAGE = "app_pages/unit.py"
UNITS_PAGE = "app_pages/units.py"
FLAG_HELP = {"artifact": "visible artifact", "watermark": "draws a watermark", "interesting": "worth a look",
             "label": "custom label (the note is the label)"}
FLAG_ICONS = {"artifact": ":material/warning:", "watermark": ":material/water_drop:", "interesting": ":material/star:",
              "label": ":material/label:"}


def db() -> str:
    return queries.db_path()


def require_store(path: str) -> dict[str, int]:
    """Counts of the store; stops the page with the empty-store message when nothing is registered."""
    c = queries.counts(path)
    if not c["models"] and not c["runs"]:
        st.info(EMPTY_MSG, icon=":material/inventory_2:")
        st.caption(f"store: `{path}`")
        st.stop()
    return c


# ---------------------------------------------------------------- formatting

def fmt(x: Any, spec: str = ".3f", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return format(x, spec)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


NOT_TESTED = "not tested"  # no null test ran for this value (e.g. a dissection without the permutation null)


def fmt_q(q: Any, log10_p: Any = None, none: str = NOT_TESTED) -> str:
    """A q-value (BH-adjusted p) or p-value for display: three decimals from 0.001 up, scientific below
    (never a bare "0" or "0.000"); one that underflowed to 0 is shown as the bound its p-value's log10
    gives (q <= p * tests, so "≈ 0 (p = 1e-923)"); a missing one as `none` ("not tested")."""
    if _missing(q):
        return none
    if q == 0:
        if not _missing(log10_p):
            return f"≈ 0 (p = 1e{log10_p:.0f})"
        return "< 1e-308"  # underflowed, bound unknown
    return format(q, ".3f") if q >= 0.001 else format(q, ".1e")


def fmt_vs(x: Any, cut: Any, digits: int = 3, most: int = 6) -> tuple[str, str]:
    """(x, cut) with the fewest decimals (at least `digits`) at which they do not round to the same text,
    so a value just under a cut-off never reads as equal to it (0.0395 vs 0.040 -> "0.0395", "0.0400")."""
    if _missing(x) or _missing(cut):
        return fmt(x, f".{digits}f"), fmt(cut, f".{digits}f")
    for d in range(digits, most + 1):
        a, b = format(x, f".{d}f"), format(cut, f".{d}f")
        if a != b or x == cut:
            return a, b
    return format(x, f".{most}f"), format(cut, f".{most}f")


def verdict(row: dict[str, Any]) -> str:
    """One clear phrase for a labelled unit: whether it passes the interpretability cut-off, and whether
    its association beats the permutation null (two different tests: a unit can beat chance with
    q = 1e-200 and still have an IoU below the cut-off)."""
    cut = row.get("interpretable_iou")
    if row.get("interpretable"):
        first = "interpretable"
    elif not _missing(cut) and not _missing(row.get("iou")):
        shown, cut_s = fmt_vs(row.get("iou"), cut)
        first = f"not interpretable (IoU {shown} below the cut-off {cut_s})"
    else:
        first = "not interpretable (below the cut-off)"
    beats = row.get("beats_chance")
    if beats is None:
        return f"{first}; association {NOT_TESTED} against the permutation null"
    return first + ("; beats chance (q < 0.05)" if beats else "; does not beat chance (q ≥ 0.05)")


def number_columns(frame: Any) -> dict[str, Any]:
    """column_config for a dataframe: p- and q-value columns in scientific notation (a tiny p is never
    shown as 0), IoU columns with four decimals. The one place st.dataframe numbers are formatted."""
    config: dict[str, Any] = {}
    for c in getattr(frame, "columns", []):
        name = c.lower()
        if name in ("p", "q") or name.endswith(("p_value", "q_value", "_p", "_q")):
            config[c] = st.column_config.NumberColumn(c, format="%.2e")
        elif name == "iou" or name.endswith("_iou"):
            config[c] = st.column_config.NumberColumn(c, format="%.4f")
    return config


_MD = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:/@&=])")
_WWW = re.compile(r"(?i)\b(www)\.")
ZWSP = "\u200b"


def md_escape(text: Any) -> str:
    """Text shown inside markdown (labels, notes, URL parameters: anything a user typed) with every
    markdown syntax escaped: no image, link, autolink (http://, www., e-mail), HTML, emoji or
    Streamlit directive (:red[..], :material/..:) can come out of it. Newlines become spaces."""
    flat = " ".join(str(text).split())
    # GFM autolink literals survive backslash escapes: a zero-width space breaks "://", "www." and "@"
    flat = _WWW.sub(lambda m: m.group(1) + ZWSP + ".", flat.replace("://", ":" + ZWSP + "//")).replace("@", ZWSP + "@")
    return _MD.sub(r"\\\1", flat)


def not_found(what: str, value: str, options: Sequence[str], where: str = "") -> str:
    """Markdown: 'There is no <what> **value**<where> in the store; the nearest is **x**.' (escaped)."""
    from db.errors import nearest

    best = nearest(value, options, cutoff=0.0) if options else None
    msg = f"There is no {what} **{md_escape(value)}**{md_escape(where)} in the store"
    if best is not None:
        msg += f"; the nearest is **{md_escape(best)}**"
    return msg + "."


def flag_badges(flags: str | None, custom_label: str | None = None) -> str:
    if not flags:
        return ""
    parts = []
    for f in flags.split(", "):
        icon = FLAG_ICONS.get(f, ":material/flag:")
        parts.append(f"{icon} {md_escape(custom_label)}" if f == "label" and custom_label else f"{icon} {f}")
    return " · ".join(parts)


def unit_link_params(model: str, layer: str, unit: int, segmenter: str | None = None,
                     mode: str | None = None) -> dict[str, str]:
    params = {"model": model, "layer": layer, "unit": str(int(unit))}
    if segmenter and mode:
        params.update(segmenter=segmenter, mode=mode)
    return params


def app_url() -> str | None:
    """The app's base URL as the browser sees it (scheme, host, port, path; no page, no query), or None
    where there is no browser (AppTest)."""
    from urllib.parse import urlsplit

    try:
        url = st.context.url
    except Exception:  # no script run context
        return None
    if not url:
        return None
    parts = urlsplit(url)  # the browser's address may still hold the page's path: keep the app's root only
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"{parts.scheme}://{parts.netloc}" + (f"/{base}" if base else "")


def permalink(params: dict[str, str], page: str = "unit", absolute: bool = False) -> str:
    """A URL of `page` that reopens exactly this view: relative ("unit?model=..."), or absolute
    ("http://host:port/unit?model=...") when asked for and the browser's address is known."""
    rel = f"{page}?" + urlencode(params)
    base = app_url() if absolute else None
    return f"{base}/{rel}" if base else rel


def with_unit_links(frame: pl.DataFrame, model: str | None = None, layer: str | None = None,
                    column: str = "open") -> tuple[pl.DataFrame, dict[str, Any]]:
    """(frame with a `column` of unit-page URLs, column_config drawing them as links "unit N"): for any
    table that lists units (columns unit, and model / layer unless given)."""
    if frame.height == 0 or "unit" not in frame.columns:
        return frame, {}
    m = pl.col("model") if model is None else pl.lit(model)
    lay = pl.col("layer") if layer is None else pl.lit(layer)
    urls = pl.concat_str([pl.lit("unit?model="), m, pl.lit("&layer="), lay, pl.lit("&unit="),
                          pl.col("unit").cast(pl.String)])
    out = frame.with_columns(urls.alias(column)).select(column, *frame.columns)
    return out, {column: st.column_config.LinkColumn(column, display_text=r"unit=(\d+)$",
                                                      help="open the unit page")}


# ---------------------------------------------------------------- pickers (remember choices across pages)

def _remembered(name: str, options: Sequence[Any], default: Any = None) -> int:
    value = st.session_state.get(f"sel_{name}", default)
    return list(options).index(value) if value in options else 0


def pick(label: str, name: str, options: Sequence[Any], key: str, container: Any = st,
         format_func: Any = str, default: Any = None, help: str | None = None, force: Any = None) -> Any:
    """A selectbox whose choice is remembered under `sel_<name>` for every page; `force` (when one of
    the options) imposes a value, e.g. one from the URL."""
    options = list(options)
    if not options:
        return None
    if force is not None and force in options:
        st.session_state[key] = force
    if key in st.session_state and st.session_state[key] in options:
        value = container.selectbox(label, options, key=key, format_func=format_func, help=help)
    else:
        st.session_state.pop(key, None)
        value = container.selectbox(label, options, index=_remembered(name, options, default), key=key,
                                    format_func=format_func, help=help)
    st.session_state[f"sel_{name}"] = value
    return value


def pick_model(path: str, key: str, container: Any = st, models: Iterable[str] | None = None,
               force: str | None = None) -> str | None:
    names = list(models) if models is not None else queries.models(path)["model"].to_list()
    return pick("model", "model", names, f"{key}_model", container, force=force)


def layer_names(path: str, model: str) -> list[str]:
    return queries.layers(path).filter(pl.col("model") == model)["layer"].to_list()


def pick_layer(path: str, model: str, key: str, container: Any = st, layers: Iterable[str] | None = None,
               default: str | None = None, force: str | None = None) -> str | None:
    names = list(layers) if layers is not None else layer_names(path, model)
    if st.session_state.get(f"{key}_layer_model") != model:  # another model: its own remembered layer
        st.session_state.pop(f"{key}_layer", None)
        st.session_state[f"{key}_layer_model"] = model
    return pick("layer", f"layer_of_{model}", names, f"{key}_layer", container, default=default, force=force)


def dissection_label(row: tuple[str, str]) -> str:
    seg, mode = row
    return f"{seg} · {'IQR (ICLR)' if mode == 'iqr' else 'quantile (PNAS)'}"


def pick_dissection(path: str, model: str, layer: str, key: str, container: Any = st,
                    force: tuple[str, str] | None = None) -> tuple[str | None, str | None]:
    """(segmenter, threshold mode) of the layer's latest dissections; (None, None) when none exists."""
    modes = queries.dissection_modes(path, model, layer)
    options = list(dict.fromkeys(zip(modes["segmenter"].to_list(), modes["threshold_mode"].to_list())))
    if not options:
        return None, None
    if len(options) == 1:
        return options[0]
    return pick("dissection", "dissection", options, f"{key}_dissection", container, format_func=dissection_label,
                help="segmenter and threshold mode of the dissection to show", force=force)


def layer_units(path: str, model: str, layer: str) -> int:
    rows = queries.layers(path).filter((pl.col("model") == model) & (pl.col("layer") == layer))
    return int(rows["units"][0]) if rows.height else 0


# ---------------------------------------------------------------- unit cards

def card_text(row: dict[str, Any], ranking: str) -> tuple[str, str]:
    """(title markdown, caption) of a unit card."""
    label = row.get("label")
    title = f"**unit {row['unit']}**"
    if label:
        title += f" · {md_escape(label)} *({md_escape(row.get('category') or '?')})*"
        if not row.get("interpretable"):
            title += " · not interpretable"
    else:
        title += " · unlabelled"
    iou, _ = fmt_vs(row.get("iou"), row.get("interpretable_iou"))
    bits = [f"IoU {iou}", f"q {fmt_q(row.get('q_value'), row.get('log10_p'))}"] if label else []
    if row.get("z") is not None:
        bits.append(f"z {fmt(row.get('z'), '.1f')}")
    if ranking == "concept_iou" and row.get("concept_iou") is not None:
        bits.append(f"concept IoU {fmt(row.get('concept_iou'))}")
    if row.get("alpha") is not None:
        bits.append(f"α {fmt(row.get('alpha'), '.2f')}")
    return title, " · ".join(bits) or "no dissection of this layer yet"


def unit_card(row: dict[str, Any], model: str, layer: str, ranking: str, segmenter: str | None,
              mode: str | None) -> Any:
    """Draw one card; returns the placeholder where its image strip goes."""
    with st.container(border=True):
        title, caption = card_text(row, ranking)
        st.markdown(title)
        st.caption(caption)
        badges = flag_badges(row.get("flags"), row.get("custom_label"))
        if badges:
            st.markdown(badges)
        slot = st.empty()
        st.page_link(UNIT_PAGE, label=f"open unit {row['unit']}", icon=":material/open_in_new:",
                     query_params=unit_link_params(model, layer, row["unit"], segmenter, mode))
    return slot


@st.dialog("top images", width="large")
def enlarge(title: str, image: Any) -> None:
    """A unit's strip (PNG bytes or an array) drawn as wide as the dialog."""
    st.markdown(md_escape(title))
    st.image(image, width="stretch")


@st.fragment
def generated_vs_rendered(path: str, key: str) -> None:
    """A toggle, then the grid of generated images above rendered village scenes for a village generator
    (its own fragment: the toggle reruns only this; torch is imported only once it is switched on)."""
    from dashboard import images

    models = queries.models(path).filter((pl.col("role") == "generator") & (pl.col("dataset") == "village"))
    if models.height == 0 or not images.enabled():
        return
    if not st.toggle("show generated images next to rendered scenes", key=f"{key}_gvr"):
        return
    name = pick("model", "gvr_model", models["model"].to_list(), f"{key}_gvr_model")
    row = models.filter(pl.col("model") == name).row(0, named=True)
    queries.release()  # no read connection held while the generator runs
    try:
        with st.spinner("drawing generated images and rendering scenes…"):
            grid = images.generated_vs_rendered(path, name, row["checkpoint_sha256"], int(row["resolution"]))
        st.image(grid, caption=f"top: {name}, seed 0, samples 0–7 · bottom: rendered village scenes, seeds 0–7",
                 width="stretch")
    except Exception as e:
        st.caption(f"images unavailable: {images.error_text(e)}")


# ---------------------------------------------------------------- flags

def flag_form(path: str, model: str, layer: str, unit: int | None, key: str) -> None:
    """A small form that sets a flag on a unit (one short write transaction)."""
    units = layer_units(path, model, layer)
    with st.form(f"{key}_flag_form", clear_on_submit=True):
        cols = st.columns([1, 1, 2])
        u = cols[0].number_input("unit", min_value=0, max_value=max(units - 1, 0),
                                 value=int(unit or 0), step=1, key=f"{key}_flag_unit",
                                 disabled=unit is not None)
        flag = cols[1].selectbox("flag", list(store.FLAGS), key=f"{key}_flag_kind",
                                 help=" · ".join(f"{f}: {h}" for f, h in FLAG_HELP.items()))
        note = cols[2].text_input("note (the label, for a custom label)", key=f"{key}_flag_note", max_chars=200)
        if st.form_submit_button("Save flag"):
            save_flag(path, model, layer, int(unit if unit is not None else u), flag, note or None)


def save_flag(path: str, model: str, layer: str, unit: int, flag: str, note: str | None) -> bool:
    width = layer_units(path, model, layer)
    if not 0 <= int(unit) < width:  # never a flag on a unit the layer does not have
        st.error(f"{md_escape(model)} {md_escape(layer)} has units 0..{width - 1}; unit {int(unit)} not flagged.")
        return False
    queries.release()  # this process must not hold a read connection while it writes
    try:
        store.set_flag(model, layer, unit, flag, note, path=path)
    except store.StoreLocked:
        st.warning("The store is busy (a job is writing to it); the flag was not saved, try again in a moment.")
        return False
    except store.StoreError as e:
        st.error(str(e))
        return False
    queries.clear_flags_cache()
    st.toast(f"flagged {model} {layer} unit {unit}: {flag}")
    return True


def remove_flag(path: str, model: str, layer: str, unit: int, flag: str) -> bool:
    queries.release()
    try:
        store.clear_flag(model, layer, unit, flag, path=path)
    except store.StoreLocked:
        st.warning("The store is busy (a job is writing to it); try again in a moment.")
        return False
    queries.clear_flags_cache()
    st.toast(f"removed {flag} from {model} {layer} unit {unit}")
    return True
