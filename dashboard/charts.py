"""Altair charts for the dashboard: polars frames from `dashboard.queries` in, `alt.Chart` out.

Reads and writes nothing; pure functions (the pages pass them to `st.altair_chart`). Colours of the
concept categories are fixed across every chart (object / part / material / other).

    from dashboard import charts, queries
    chart = charts.layer_categories(queries.layer_summary(queries.db_path()))
"""
from __future__ import annotations

from typing import Sequence

import altair as alt
import polars as pl

CATEGORIES = ("object", "part", "material", "other")
CATEGORY_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2")
RANKING_COLORS = {"ace": "#d62728", "iou": "#1f77b4", "random": "#7f7f7f"}


def category_color(field: str = "category", title: str = "category") -> alt.Color:
    return alt.Color(f"{field}:N", title=title, scale=alt.Scale(domain=list(CATEGORIES), range=list(CATEGORY_COLORS)),
                     sort=list(CATEGORIES))


def _pd(frame: pl.DataFrame):
    """Altair and Streamlit take polars frames through narwhals; pandas keeps the widest compatibility."""
    return frame.to_pandas()


def category_counts(summary: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """layer_summary rows -> long rows (by..., category, units) of interpretable units per category."""
    cols = {"object_units": "object", "part_units": "part", "material_units": "material", "other_units": "other"}
    long = summary.select([*by, *cols]).unpivot(index=list(by), on=list(cols), variable_name="category",
                                                value_name="units")
    return long.with_columns(pl.col("category").replace_strict(cols))


def layer_categories(summary: pl.DataFrame, x: str = "layer", x_title: str = "layer",
                     order: Sequence[str] | None = None, height: int = 280) -> alt.Chart:
    """Stacked bars: interpretable units per category for each layer (paper Fig. 6 / 19)."""
    by = [x] + (["layer_index"] if "layer_index" in summary.columns and x != "layer_index" else [])
    long = category_counts(summary, by)
    sort = list(order) if order is not None else (
        summary.sort("layer_index")[x].unique(maintain_order=True).to_list() if "layer_index" in summary.columns
        else None)
    return alt.Chart(_pd(long)).mark_bar().encode(
        x=alt.X(f"{x}:N", title=x_title, sort=sort,
                axis=alt.Axis(labelAngle=-30, labelLimit=0, labelOverlap=False)),  # every column named, in full
        y=alt.Y("sum(units):Q", title="interpretable units"),
        color=category_color(),
        order=alt.Order("category:N", sort="ascending"),
        tooltip=[alt.Tooltip(f"{x}:N", title=x_title), "category:N", alt.Tooltip("sum(units):Q", title="units")],
    ).properties(height=height)


def concept_distribution(concepts: pl.DataFrame, value: str = "interpretable_units", height: int = 260) -> alt.Chart:
    """Bars: number of units whose label is each concept, coloured by category (paper Fig. 5)."""
    data = concepts.filter(pl.col(value) > 0)
    return alt.Chart(_pd(data)).mark_bar().encode(
        x=alt.X("concept:N", sort="-y", title="concept", axis=alt.Axis(labelAngle=-40, labelOverlap=False)),
        y=alt.Y(f"{value}:Q", title=value.replace("_", " ")),
        color=category_color(),
        tooltip=["concept:N", "category:N", "labelled_units:Q", "interpretable_units:Q",
                 alt.Tooltip("max_iou:Q", format=".3f")],
    ).properties(height=height)


def unit_iou_bars(iou: pl.DataFrame, interpretable_iou: float | None = None) -> alt.Chart:
    """Horizontal bars: a unit's IoU with every concept, sorted, with the interpretability line."""
    data = iou.filter(pl.col("iou").is_not_null())
    height = alt.Step(22)  # discrete y: a fixed band per concept (a number here is squeezed by Streamlit)
    bars = alt.Chart(_pd(data)).mark_bar().encode(
        y=alt.Y("concept:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False)),
        x=alt.X("iou:Q", title="IoU"),
        color=category_color(),
        tooltip=["concept:N", "category:N", alt.Tooltip("iou:Q", format=".4f"), alt.Tooltip("p_value:Q", format=".2g"),
                 alt.Tooltip("z:Q", format=".1f"), alt.Tooltip("threshold:Q", format=".3f")],
    )
    if interpretable_iou is None:
        return bars.properties(height=height)
    rule = alt.Chart(_pd(pl.DataFrame({"iou": [float(interpretable_iou)]}))).mark_rule(
        strokeDash=[4, 3], color="#444").encode(x="iou:Q")
    return alt.layer(bars, rule).properties(height=height)


def quantile_curve(quantiles: pl.DataFrame, threshold: float | None = None) -> alt.Chart:
    """The unit's activation quantile function (value against q), with its threshold."""
    line = alt.Chart(_pd(quantiles)).mark_line(point=True).encode(
        x=alt.X("q:Q", title="quantile level q"), y=alt.Y("value:Q", title="activation"),
        tooltip=[alt.Tooltip("q:Q", format=".3f"), alt.Tooltip("value:Q", format=".4f")],
    ).properties(height=220)
    if threshold is None:
        return line
    rule = alt.Chart(_pd(pl.DataFrame({"value": [float(threshold)]}))).mark_rule(
        strokeDash=[4, 3], color="#d62728").encode(y="value:Q")
    return line + rule


def alpha_per_concept(alpha: pl.DataFrame) -> alt.Chart:
    """Bars: a unit's optimised α for each concept."""
    return alt.Chart(_pd(alpha)).mark_bar().encode(
        y=alt.Y("concept:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False)),
        x=alt.X("alpha:Q", title="α", scale=alt.Scale(domain=[0, 1])),
        tooltip=["concept:N", alt.Tooltip("alpha:Q", format=".3f"), alt.Tooltip("alpha_init:Q", format=".3f")],
    ).properties(height=alt.Step(22))


def alpha_bars(alpha: pl.DataFrame, top: int | None = None) -> alt.Chart:
    """Sorted bars: α of every unit for one concept (the causal unit set stands out on the left)."""
    data = alpha.sort("alpha", descending=True)
    if top:
        data = data.head(top)
    return alt.Chart(_pd(data)).mark_bar().encode(
        x=alt.X("unit:O", sort="-y", title="unit (sorted by α)", axis=alt.Axis(labels=data.height <= 64)),
        y=alt.Y("alpha:Q", title="α", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("alpha:Q", scale=alt.Scale(scheme="reds", domain=[0, 1]), legend=None),
        tooltip=["unit:O", alt.Tooltip("alpha:Q", format=".3f"), alt.Tooltip("alpha_init:Q", format=".3f")],
    ).properties(height=240)


def ace_epochs(epochs: pl.DataFrame) -> alt.Chart:
    """The α optimisation: causal effect and loss per epoch."""
    long = epochs.select("epoch", "effect", "loss").unpivot(index="epoch", variable_name="series")
    return alt.Chart(_pd(long)).mark_line(point=True).encode(
        x=alt.X("epoch:Q"), y=alt.Y("value:Q", title=None), color=alt.Color("series:N", title=None),
        tooltip=["epoch:Q", "series:N", alt.Tooltip("value:Q", format=".4f")],
    ).properties(height=200)


def ablation_curves(curves: pl.DataFrame) -> alt.Chart:
    """Lines: fraction of the concept left after ablating the top-n units of each ranking (paper Fig. 4);
    the random ranking has a ±1 std band over its draws."""
    data = curves.with_columns(
        lo=(pl.col("remaining") - pl.col("remaining_std").fill_null(0)).clip(lower_bound=0),
        hi=pl.col("remaining") + pl.col("remaining_std").fill_null(0))
    rankings = [r for r in RANKING_COLORS if r in set(data["ranking"].to_list())]
    scale = alt.Scale(domain=rankings, range=[RANKING_COLORS[r] for r in rankings])
    color = alt.Color("ranking:N", scale=scale)
    base = alt.Chart(_pd(data)).encode(x=alt.X("n_units:Q", title="units ablated",
                                               axis=alt.Axis(format="d", tickMinStep=1)))
    band = base.transform_filter("datum.remaining_std != null").mark_area(opacity=0.2).encode(
        y=alt.Y("lo:Q"), y2="hi:Q", fill=alt.Fill("ranking:N", scale=scale, legend=None))
    line = base.mark_line(point=True).encode(
        y=alt.Y("remaining:Q", title="fraction of concept pixels left"), color=color,
        tooltip=["ranking:N", "n_units:Q", alt.Tooltip("remaining:Q", format=".3f"),
                 alt.Tooltip("remaining_std:Q", format=".3f"), "draws:Q"])
    return (band + line).properties(height=260)


def insertion_contexts(contexts: pl.DataFrame) -> alt.Chart:
    """Bars with ±1 std: mean effect of inserting the concept by what is at the location (paper Fig. 11)."""
    data = contexts.with_columns(lo=pl.col("effect") - pl.col("effect_std").fill_null(0),
                                 hi=pl.col("effect") + pl.col("effect_std").fill_null(0))
    base = alt.Chart(_pd(data)).encode(x=alt.X("context:N", sort="-y", title="context at the location",
                                               axis=alt.Axis(labelAngle=-30)))
    bars = base.mark_bar(color="#4c78a8").encode(
        y=alt.Y("effect:Q", title="mean added concept pixels"),
        tooltip=["context:N", "locations:Q", alt.Tooltip("effect:Q", format=".3f"),
                 alt.Tooltip("effect_std:Q", format=".3f")])
    err = base.mark_errorbar().encode(y="lo:Q", y2="hi:Q")
    return (bars + err).properties(height=260)


def heat_grid(data: pl.DataFrame, facet: str, facet_title: str, columns: int = 4, side: int = 150,
              title: str = "effect") -> alt.FacetChart:
    """Heat maps of `effect` over (y, x), one per value of `facet` (samples or target layers), each
    about `side` pixels wide."""
    w = int(data["x"].max()) + 1 if data.height else 1
    h = int(data["y"].max()) + 1 if data.height else 1
    cell = max(2, side // max(w, h))
    width, height = cell * w, cell * h
    return alt.Chart(_pd(data)).mark_rect().encode(
        x=alt.X("x:O", axis=None), y=alt.Y("y:O", axis=None),
        color=alt.Color("effect:Q", title=title, scale=alt.Scale(scheme="inferno")),
        tooltip=[f"{facet}:N", "y:O", "x:O", alt.Tooltip("effect:Q", format=".4f")],
    ).properties(width=width, height=height).facet(
        facet=alt.Facet(f"{facet}:N", title=facet_title), columns=columns).resolve_scale(color="independent")


def emergence(frame: pl.DataFrame, value: str = "interpretable_units") -> alt.Chart:
    """Lines: interpretable units of each layer against the checkpoint's training step (S-6.6)."""
    layers = frame.sort("layer_index")["layer"].unique(maintain_order=True).to_list()
    return alt.Chart(_pd(frame)).mark_line(point=True).encode(
        x=alt.X("training_step:Q", title="training step"),
        y=alt.Y(f"{value}:Q", title=value.replace("_", " ")),
        color=alt.Color("layer:N", sort=layers, scale=alt.Scale(domain=layers, scheme="viridis"),
                        legend=alt.Legend(values=layers, symbolLimit=0, labelLimit=0)),  # every layer, in order
        tooltip=["model:N", "layer:N", "training_step:Q", f"{value}:Q"],
    ).properties(height=300)


def emergence_categories(frame: pl.DataFrame) -> alt.Chart:
    """Stacked areas: interpretable units by category (all layers of a group together) against training step."""
    long = category_counts(frame, ["model", "training_step"])
    return alt.Chart(_pd(long)).mark_area(opacity=0.85).encode(
        x=alt.X("training_step:Q", title="training step"),
        y=alt.Y("sum(units):Q", title="interpretable units (all layers)"),
        color=category_color(), order=alt.Order("category:N"),
        tooltip=["model:N", "training_step:Q", "category:N", alt.Tooltip("sum(units):Q", title="units")],
    ).properties(height=260)


def concept_heatmap(frame: pl.DataFrame, x: str = "selection", value: str = "interpretable_units",
                    order: list[str] | None = None) -> alt.Chart:
    """Heat map: units per concept (rows) for each compared layer (columns, in `order` when given, e.g.
    by layer index: never layer10 before layer2), with counts printed."""
    concepts = (frame.group_by("concept").agg(pl.col(value).sum()).sort(value, descending=True)["concept"]
                .to_list())
    base = alt.Chart(_pd(frame)).encode(
        x=alt.X(f"{x}:N", title=None, sort=order, axis=alt.Axis(labelAngle=-20, labelLimit=0, labelOverlap=False)),
        y=alt.Y("concept:N", sort=concepts, title=None, axis=alt.Axis(labelOverlap=False)))
    rect = base.mark_rect().encode(color=alt.Color(f"{value}:Q", title=value.replace("_", " "),
                                                   scale=alt.Scale(scheme="blues")),
                                   tooltip=[f"{x}:N", "concept:N", "category:N", f"{value}:Q"])
    top = float(frame[value].max() or 0) if frame.height else 0.0
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text(f"{value}:Q"),
        color=alt.condition(alt.datum[value] > top / 2, alt.value("white"), alt.value("black")))
    return alt.layer(rect, text).properties(height=alt.Step(24))


# ---------------------------------------------------------------- diagnosis: realism, repair, coverage

FLAG_STATE_COLORS = {"flagged": "#d62728", "not flagged": "#4c78a8"}
DIRECTION_COLORS = {"under-produced": "#e45756", "over-produced": "#4c78a8", "as often as real": "#9d9d9d"}


def realism_histogram(units: pl.DataFrame, threshold: float | None = None, bins: int = 30) -> alt.Chart:
    """Histogram of per-unit realism scores (Fréchet distance of the unit's top images to real images),
    stacked by whether the unit is flagged (artifact / watermark); an optional dashed cut-off line."""
    data = units.select("unit", "frechet", "flag_state")
    scale = alt.Scale(domain=list(FLAG_STATE_COLORS), range=list(FLAG_STATE_COLORS.values()))
    bars = alt.Chart(_pd(data)).mark_bar().encode(
        x=alt.X("frechet:Q", bin=alt.Bin(maxbins=bins),
                title="Fréchet distance to real images (higher: less realistic)"),
        y=alt.Y("count():Q", title="units"),
        color=alt.Color("flag_state:N", scale=scale, title=None),
        tooltip=[alt.Tooltip("frechet:Q", bin=alt.Bin(maxbins=bins), title="Fréchet"), "flag_state:N",
                 alt.Tooltip("count():Q", title="units")],
    )
    if threshold is None:
        return bars.properties(height=240)
    rule = alt.Chart(_pd(pl.DataFrame({"frechet": [float(threshold)]}))).mark_rule(
        strokeDash=[4, 3], color="#444").encode(x="frechet:Q")
    return alt.layer(bars, rule).properties(height=240)


def precision_recall(pr: pl.DataFrame, k_mark: int | None = None) -> alt.Chart:
    """The realism score as a predictor of the flagged units (paper Fig. 12): precision against recall
    over the cut-off k (the k worst units), the point at `k_mark` marked and labelled."""
    unit_scale = alt.Scale(domain=[0, 1])
    base = alt.Chart(_pd(pr)).encode(
        x=alt.X("recall:Q", title="recall (flagged units found)", scale=unit_scale, axis=alt.Axis(titleLimit=0)),
        y=alt.Y("precision:Q", title="precision (flagged share)", scale=unit_scale, axis=alt.Axis(titleLimit=0)),
        tooltip=["k:Q", alt.Tooltip("frechet:Q", format=".2f", title="Fréchet ≥"),
                 alt.Tooltip("precision:Q", format=".2f"), alt.Tooltip("recall:Q", format=".2f"),
                 alt.Tooltip("flagged_in_k:Q", title="flagged among the k"), "n_flagged:Q"])
    line = base.mark_line(point=True, color="#4c78a8").encode(order="k:Q")
    if k_mark is None:
        return line.properties(height=260)
    marked = pr.filter(pl.col("k") == k_mark).with_columns(text=pl.format("k = {}", pl.col("k")))
    point = alt.Chart(_pd(marked)).mark_point(shape="diamond", size=180, filled=True, color="#d62728").encode(
        x="recall:Q", y="precision:Q")
    text = alt.Chart(_pd(marked)).mark_text(align="left", dx=10, dy=-10, color="#d62728").encode(
        x="recall:Q", y="precision:Q", text="text:N")
    return alt.layer(line, point, text).properties(height=260)


def concept_coverage(coverage: pl.DataFrame) -> alt.Chart:
    """Horizontal bars: how much more (or less) of each concept's pixels the generator draws than real
    images hold (generated / real − 1), sorted, under- and over-produced concepts in their own colours."""
    data = coverage.filter(pl.col("fraction_change").is_not_null())
    scale = alt.Scale(domain=list(DIRECTION_COLORS), range=list(DIRECTION_COLORS.values()))
    bars = alt.Chart(_pd(data)).mark_bar().encode(
        y=alt.Y("concept:N", sort=alt.EncodingSortField("fraction_change", order="ascending"), title=None,
                axis=alt.Axis(labelOverlap=False)),
        x=alt.X("fraction_change:Q", title="generated / real pixel share − 1", axis=alt.Axis(format="+%")),
        color=alt.Color("direction:N", scale=scale, title=None),
        tooltip=["concept:N", "category:N", alt.Tooltip("generated_fraction:Q", format=".4f", title="generated share"),
                 alt.Tooltip("real_fraction:Q", format=".4f", title="real share"),
                 alt.Tooltip("fraction_change:Q", format="+.1%", title="change"),
                 alt.Tooltip("generated_presence:Q", format=".0%", title="in generated images"),
                 alt.Tooltip("real_presence:Q", format=".0%", title="in real images")],
    )
    zero = alt.Chart(_pd(pl.DataFrame({"fraction_change": [0.0]}))).mark_rule(color="#444").encode(
        x="fraction_change:Q")
    return alt.layer(bars, zero).properties(height=alt.Step(22))
