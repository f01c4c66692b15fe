"""ablate and repair name their checkpoints with `compute.jobs.context.pass_name`, so a dotted layer or
concept never shares another pass's checkpoint: with the former f-strings, layer "g.layer2" with concept
c and layer "g" with concept "layer2.c" both wrote `ablate.g.layer2.c.counts`. Checked on a run of the
tiny two-branch module generator (tests/compute/test_families_intervene.py) at its dotted layer
"g.layer2": dissect -> ace -> ablate and realism -> repair, recording every checkpoint opened.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/compute/test_ablate_repair_pass_names.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compute.jobs.context import pass_name
from ingest.models.village_seg import load_village_seg
from tests.compute.test_families_intervene import _common_concept, _load, make_branchy
from tests.helpers import intervention_analyses, model, run_spec_in, segmenter, spec_text, write_spec

LAYER = "g.layer2"


def test_dotted_layers_and_concepts_get_their_own_checkpoints(tmp_path: Path, tiny_seg: Path,
                                                              checkpoint_names: list[str]) -> None:
    torch.manual_seed(2)
    torch.save(make_branchy().state_dict(), tmp_path / "branchy.pth")
    entry = model("branchy", tmp_path / "branchy.pth", family="module", dataset="village",
                  factory="tests.compute.test_families_intervene:make_branchy", kwargs={"z": 8, "width": 8},
                  layers=[LAYER], latent_shape=[8, 1, 1], output="tanh")
    gen = _load(entry, "branchy", tmp_path)
    concept = _common_concept(gen, load_village_seg(str(tiny_seg)).eval())  # present, so ablate runs its pass
    real = tmp_path / "real.npy"  # "real" images: noise at the generator's size
    np.save(real, np.random.default_rng(0).integers(0, 256, (20, gen.resolution, gen.resolution, 3), dtype=np.uint8))

    names = checkpoint_names
    text = spec_text(tmp_path / "store.duckdb", models=[entry], segmenters=[segmenter("seg", tiny_seg)],
                     analyses=intervention_analyses(
                         "branchy", "seg", LAYER, dissect=dict(samples=8, seed=2, batch_size=8),
                         ace=dict(samples=6, seed=2, concepts=[concept], epochs=1, steps_per_epoch=1, batch=4,
                                  eval_items=4),
                         ablate=dict(samples=4, seed=3, concepts=[concept], n_max=1, draws=1, effect_units=1,
                                     insert_locations=1),
                         realism=dict(samples=40, seed=4, top_fraction=0.5, real=real, real_samples=20,
                                      batch_size=20),
                         repair=dict(samples=20, seed=5, n_units=1, draws=1, real=real, real_samples=20,
                                     batch_size=20)))
    out = run_spec_in(tmp_path, write_spec(tmp_path, text))
    assert [o.state for o in out] == ["done"] * 5, [(o.job.analysis.name, o.error) for o in out]

    expected = {pass_name("ablate", LAYER, "k"), pass_name("ablate", LAYER, concept, "counts"),
                pass_name("repair", LAYER)}
    ours = {n for n in names if n.startswith(("ablate.", "repair."))}
    assert ours == expected, sorted(set(names))  # the former f-strings gave "ablate.g.layer2.k", ...
