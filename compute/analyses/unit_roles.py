"""The role of a classifier's units (PNAS 2020, first half): per-class accuracy with units ablated.

Reads the job's classifier model (a spec model with `role = "classifier"`) and labelled held-out images:
for a village classifier the balanced held-out split of `ingest.village.scenes` (`samples` scenes per
class, seeds from HELDOUT_SEED_START, the model card's set when samples = 250), or `labelled = "dir/"`
(a folder with one sub-folder of images per class, named as the class). Writes

- `class_unit_effects`: for every unit of every job layer and every class, the class's accuracy (and
  mean logit / softmax probability of the true class) on its held-out images with that one unit
  ablated (its featuremap set to 0 everywhere), the drops from the unablated baseline, and the unit's
  importance rank for the class (1 = largest accuracy drop; ties broken by the larger logit drop, then
  the lower unit index);
- `class_ablation_curves`: per class, ranking `top` (the class's k most important units ablated
  together) and `random` (k units drawn uniformly, averaged over `draws` sets; seeded by the run's
  seed and layer, the same sets for every class), for k = 0 (the baseline) .. `k_max`: the class's accuracy and
  `other_accuracy`, the mean accuracy of the other classes (the paper's sparsity figure).

Units are ranked and curves measured on the same held-out images (as in the paper). A classifier with a
`forward_from(layer, featuremap)` method (village-cls) runs only the layers after the ablated one;
others are run whole with a `Tap` edit.

Its parameters (k_max, draws, labelled, batch_size) are `job.config`'s; the kind's code version, tables
and defaults are declared in the registry (compute/analyses/__init__.py).

    gandissect run gandissect.toml --only cls-roles         # kind = "unit_roles"
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from compute.core.tap import Edit, Tap
from compute.jobs.context import Job, RunContext
from db.errors import BadInput


class UnitRolesError(BadInput):
    """Bad input for a unit_roles run (not a classifier, no labelled images): one line, exit 2."""


# ---------------------------------------------------------------- held-out images

def held_out(job: Job, classifier: Any, source: Any) -> tuple[Tensor, Tensor]:
    """(images [N, 3, H, W] in [-1, 1], labels int64 [N]) of the run's labelled held-out set."""
    a = job.analysis
    folder = a.path_param("labelled")
    if folder is not None:
        return labelled_folder(Path(folder), tuple(classifier.classes), int(classifier.resolution))
    from ingest.village.scenes import CLASSES, HELDOUT_SEED_START

    if getattr(source, "name", None) != "village" or tuple(classifier.classes) != CLASSES:
        raise UnitRolesError(f"{a.name}: model {job.model.name!r} is not a village scene classifier: "
                             "give labelled = \"<folder with one sub-folder per class>\"")
    from ingest.real import to_input
    from ingest.village.scenes import POOL_DIR, load_split

    images, labels, _ = load_split(HELDOUT_SEED_START, int(job.config.samples), POOL_DIR)
    return to_input(images), torch.as_tensor(labels)


def labelled_folder(path: Path, classes: tuple[str, ...], size: int) -> tuple[Tensor, Tensor]:
    """Images of `path/<class>/*` for every class, resized to size: ([N, 3, size, size], labels [N])."""
    from PIL import Image

    from ingest.models.image_source import IMAGE_SUFFIXES

    if not path.is_dir():
        raise UnitRolesError(f"labelled images: no folder {path}")
    images, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(f for f in (path / c).glob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if (path / c).is_dir() else []
        if not files:
            raise UnitRolesError(f"labelled images: {path / c} holds no images of class {c!r}")
        for f in files:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))
            labels.append(k)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x, torch.tensor(labels, dtype=torch.long)


# ---------------------------------------------------------------- ablation

def ablated_logits(classifier: Any, layer: str, images: Tensor, masks: Tensor, batch_size: int,
                   device: torch.device) -> Tensor:
    """Logits with unit sets ablated: masks float [S, C] (1 = ablate) -> [S, N, K] for images [N, 3, H, W]."""
    out = torch.empty(masks.shape[0], images.shape[0], len(classifier.classes))
    fast = getattr(classifier, "forward_from", None)
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            x = images[s:s + batch_size].to(device)
            if fast is not None:
                with Tap(classifier, [layer], stop_after=layer) as tap:
                    tap.run(x)
                    feat = tap[layer]
                for j in range(masks.shape[0]):
                    keep = (1 - masks[j]).to(device).view(1, -1, *([1] * (feat.dim() - 2)))
                    out[j, s:s + x.shape[0]] = fast(layer, feat * keep).float().cpu()
            else:
                for j in range(masks.shape[0]):
                    with Tap(classifier, [layer], edit={layer: Edit(masks[j].to(device), 0.0)}, retain=False):
                        out[j, s:s + x.shape[0]] = classifier(x).float().cpu()
    return out


def class_metrics(logits: Tensor, labels: Tensor, k: int) -> dict[str, Tensor]:
    """Per-class accuracy, mean true-class logit and probability: logits [S, N, K] -> each [S, K]."""
    correct = (logits.argmax(-1) == labels).double()  # [S, N]
    true_logit = logits.gather(-1, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1))[..., 0].double()
    true_prob = logits.softmax(-1).gather(-1, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1))[..., 0].double()
    onehot = torch.nn.functional.one_hot(labels, k).double()  # [N, K]
    count = onehot.sum(0).clamp_min(1)
    return {"accuracy": correct @ onehot / count, "true_logit": true_logit @ onehot / count,
            "true_prob": true_prob @ onehot / count}


def importance_order(acc_drop: Tensor, logit_drop: Tensor) -> list[int]:
    """Units from most to least important: larger accuracy drop, then larger logit drop, then lower index."""
    units = range(acc_drop.shape[0])
    return sorted(units, key=lambda u: (-float(acc_drop[u]), -float(logit_drop[u]), u))


def layer_rows(job: Job, layer: str, run: Callable[[Tensor], Tensor], units: int, labels: Tensor,
               classes: tuple[str, ...], k_max: int, draws: int, seed: int
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of both tables for one layer; `run(masks [S, C]) -> logits [S, N, K]`."""
    k = len(classes)
    base = class_metrics(run(torch.zeros(1, units)), labels, k)
    single = class_metrics(run(torch.eye(units)), labels, k)
    counts = torch.bincount(labels, minlength=k)
    effects: list[dict[str, Any]] = []
    orders: list[list[int]] = []
    for c in range(k):
        acc_drop = base["accuracy"][0, c] - single["accuracy"][:, c]
        logit_drop = base["true_logit"][0, c] - single["true_logit"][:, c]
        order = importance_order(acc_drop, logit_drop)
        orders.append(order)
        rank = {u: r + 1 for r, u in enumerate(order)}
        for u in range(units):
            effects.append({
                "run_key": job.run_key, "model": job.model.name, "layer": layer, "unit": u, "class": classes[c],
                "class_index": c, "images": int(counts[c]), "rank": rank[u],
                "accuracy": float(single["accuracy"][u, c]), "accuracy_drop": float(acc_drop[u]),
                "true_logit": float(single["true_logit"][u, c]), "logit_drop": float(logit_drop[u]),
                "true_prob": float(single["true_prob"][u, c]),
                "prob_drop": float(base["true_prob"][0, c] - single["true_prob"][u, c]),
            })
    curves: list[dict[str, Any]] = []
    ks = list(range(0, min(k_max, units) + 1))
    # random unit sets do not depend on the class: one set of draws per k serves every class's curve
    gen = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, layer)))
    rand = torch.zeros(len(ks) * draws, units)
    for i, n in enumerate(ks):
        for d in range(draws):
            rand[i * draws + d, torch.randperm(units, generator=gen)[:n]] = 1
    m_rand_all = class_metrics(run(rand), labels, k)["accuracy"].view(len(ks), draws, k)
    for c in range(k):
        others = [o for o in range(k) if o != c]
        top = torch.zeros(len(ks), units)
        for i, n in enumerate(ks):
            top[i, orders[c][:n]] = 1
        m_top = class_metrics(run(top), labels, k)["accuracy"]  # [len(ks), K]
        m_rand = m_rand_all
        for i, n in enumerate(ks):
            base_row = {"run_key": job.run_key, "model": job.model.name, "layer": layer, "class": classes[c], "k": n}
            curves.append({**base_row, "ranking": "top", "draws": 1, "accuracy": float(m_top[i, c]),
                           "other_accuracy": float(m_top[i, others].mean()), "accuracy_std": 0.0,
                           "other_accuracy_std": 0.0, "units": ",".join(map(str, orders[c][:n]))})
            r = m_rand[i]  # [draws, K]
            other = r[:, others].mean(1)
            curves.append({**base_row, "ranking": "random", "draws": draws, "accuracy": float(r[:, c].mean()),
                           "other_accuracy": float(other.mean()),
                           "accuracy_std": float(r[:, c].std()) if draws > 1 else 0.0,
                           "other_accuracy_std": float(other.std()) if draws > 1 else 0.0, "units": None})
    return effects, curves


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    a = job.analysis
    model = ctx.generator(job)
    classifier = getattr(model, "classifier", None)
    if classifier is None:
        raise UnitRolesError(f"{a.name}: model {job.model.name!r} is not a classifier (declare role = \"classifier\")")
    images, labels = held_out(job, classifier, getattr(model, "source", None))
    cfg = job.config
    bs, k_max, draws = int(cfg.batch_size), int(cfg.k_max), int(cfg.draws)
    effects: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    for layer in ctx.progress(job.layers, desc=f"{job.model.name} unit roles"):
        with torch.no_grad(), Tap(classifier, [layer], stop_after=layer) as tap:
            tap.run(images[:1].to(ctx.device))
            units = int(tap[layer].shape[1])

        def run(masks: Tensor, layer: str = layer) -> Tensor:
            return ablated_logits(classifier, layer, images, masks, bs, ctx.device)

        e, c = layer_rows(job, layer, run, units, labels, tuple(classifier.classes), k_max, draws, int(cfg.seed))
        effects += e
        curves += c
    return {"class_unit_effects": effects, "class_ablation_curves": curves}
