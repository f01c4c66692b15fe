"""The village world's rules, checked on the labels of 500 rendered scenes (issue 9, section 1)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from ingest.village import CONCEPTS, INDEX, Scene, render, render_batch

N = 500


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [render(s) for s in range(N)]


@pytest.fixture(scope="module")
def bare() -> list[Scene]:
    return [render(s, trees=False) for s in range(N)]


def _column_of(scene: Scene, x: int):
    return [b for b in scene.buildings if b.box[0] <= x < b.box[2]]


def test_labels_shapes_and_exclusivity(scenes: list[Scene]) -> None:
    names = {c.name for c in CONCEPTS if c.category != "none"}
    for sc in scenes[:50]:
        assert sc.image.dtype == np.uint8 and sc.image.shape == (64, 64, 3)
        assert set(sc.labels) == names
        assert all(m.dtype == bool and m.shape == (64, 64) for m in sc.labels.values())
        objects = sum(sc.labels[c.name].astype(int) for c in CONCEPTS if c.category == "object")
        assert (objects == 1).all()  # every pixel is exactly one object
        parts = sum(sc.labels[c.name].astype(int) for c in CONCEPTS if c.category == "part")
        assert (parts == sc.labels["building"]).all()  # parts exactly on buildings
        mats = sc.labels["brick"].astype(int) + sc.labels["plaster"]
        assert (mats == sc.labels["wall"]).all()  # materials exactly on walls


def test_sky_clouds_and_ground(scenes: list[Scene]) -> None:
    for sc in scenes:
        rows = np.arange(64)[:, None]
        above = np.broadcast_to(rows < sc.horizon, (64, 64))
        assert not (sc.labels["cloud"] & ~above).any(), sc.seed
        assert not (sc.labels["sky"] & ~above).any(), sc.seed
        assert not (sc.labels["grass"] & above).any(), sc.seed
        assert not (sc.labels["road"] & above).any(), sc.seed
        if sc.labels["cloud"].any():  # clouds keep 2 px off the horizon
            assert np.nonzero(sc.labels["cloud"])[0].max() < sc.horizon - 2
    assert sum(sc.labels["cloud"].any() for sc in scenes) > N // 3


def test_exactly_one_door_per_building_at_the_wall_bottom(bare: list[Scene]) -> None:
    checked = 0
    for sc in bare:
        assert 1 <= len(sc.buildings) <= 3
        assert not sc.labels["tree"].any()
        for b in sc.buildings:
            x0, y0, x1, y1 = b.door
            assert y1 == b.wall[3], sc.seed  # the door's bottom edge is the wall's bottom edge
            assert b.wall[0] < x0 and x1 < b.wall[2] and b.wall[1] < y0
            assert b.wall[3] > sc.horizon  # the building stands on the ground
            assert x1 - x0 >= 3 and y1 - y0 >= 5
            for w in b.windows:
                assert w[2] - w[0] >= 3 and w[3] - w[1] >= 3
        if sc.has_watermark:
            continue
        comps, n = ndimage.label(sc.labels["door"])
        assert n == len(sc.buildings), sc.seed
        for b in sc.buildings:
            x0, y0, x1, y1 = b.door
            assert sc.labels["door"][y0:y1, x0:x1].all()
            assert sc.labels["door"][y1 - 1, x0:x1].all()
            if y1 < 64:
                assert not sc.labels["building"][y1, x0:x1].any()  # below the door: ground
        checked += 1
    assert checked > N * 0.7


def test_doors_windows_roofs_in_building_columns(scenes: list[Scene]) -> None:
    for sc in scenes:
        for name in ("door", "window", "wall", "roof", "dome"):
            ys, xs = np.nonzero(sc.labels[name])
            for y, x in zip(ys, xs):
                owners = _column_of(sc, x)
                assert len(owners) == 1, (sc.seed, name, y, x)
                b = owners[0]
                assert b.box[1] <= y < b.box[3], (sc.seed, name)
                if name == "window":
                    assert b.wall[1] <= y < b.door[1] - 1, (sc.seed, "window above door height")
                    assert b.wall[0] <= x < b.wall[2]
                if name == "door":
                    assert b.door[0] <= x < b.door[2] and b.door[1] <= y < b.door[3]
                if name in ("roof", "dome"):
                    assert y < b.wall[1], (sc.seed, name, "on top of the wall")
    n_roof = sum(sc.labels["roof"].any() for sc in scenes)
    n_dome = sum(sc.labels["dome"].any() for sc in scenes)
    assert n_roof > N // 4 and n_dome > N // 4


def test_trees_stand_on_ground(scenes: list[Scene]) -> None:
    counts = [len(sc.trees) for sc in scenes]
    assert min(counts) == 0 and max(counts) == 4
    for sc in scenes:
        for x0, y0, x1, y1 in sc.trees:
            assert y1 > sc.horizon, sc.seed  # the trunk's foot is below the horizon
        if sc.has_watermark:  # a banner may cut a tree in two
            continue
        comps, n = ndimage.label(sc.labels["tree"])
        for sl in ndimage.find_objects(comps):
            assert sl[0].stop > sc.horizon, sc.seed


def test_tree_free_render_is_the_same_scene(scenes: list[Scene], bare: list[Scene]) -> None:
    differs = 0
    for sc, b in zip(scenes, bare):
        free = sc.tree_cover == 0
        assert (sc.image[free] == b.image[free]).all(), sc.seed
        assert (sc.label_maps[:, free] == b.label_maps[:, free]).all(), sc.seed
        assert (b.tree_cover == 0).all()
        differs += int((~free).any())
        assert sc.labels["tree"].sum() <= (~free).sum()
    assert differs > N // 2


def test_watermark_rate(scenes: list[Scene]) -> None:
    marked = [sc.has_watermark for sc in scenes]
    assert 0.10 <= np.mean(marked) <= 0.20
    for sc in scenes:
        assert sc.labels["watermark"].any() == sc.has_watermark, sc.seed


def test_every_concept_is_drawn(scenes: list[Scene]) -> None:
    for c in CONCEPTS[1:]:
        assert sum(sc.labels[c.name].any() for sc in scenes) >= 20, c.name
    assert any(sc.road for sc in scenes) and not all(sc.road for sc in scenes)


def test_deterministic_and_batch_matches() -> None:
    a, b = render(123), render(123)
    assert (a.image == b.image).all() and (a.label_maps == b.label_maps).all()
    assert not (render(124).image == a.image).all()
    imgs, labs = render_batch([123, 7])
    assert imgs.shape == (2, 64, 64, 3) and imgs.dtype == np.uint8
    assert labs.shape == (2, 3, 64, 64) and labs.dtype == np.uint8
    assert (imgs[0] == a.image).all() and (labs[0] == a.label_maps).all()
    assert labs[:, 0].max() <= INDEX["watermark"]


def test_render_speed() -> None:
    """A few ms of CPU per scene (process time: robust to other jobs sharing the cores)."""
    render(0)
    t = time.process_time()
    for s in range(100):
        render(s)
    per_scene = (time.process_time() - t) / 100
    assert per_scene < 0.025, f"{per_scene * 1000:.1f} ms of CPU per scene"


def test_too_small_scenes_are_refused_in_one_line():
    """The renderer's layout needs room: a generator whose images are smaller than VILLAGE_MIN_SIZE gets
    a bad-input error naming the way out (a folder dataset), not numpy's 'low >= high'."""
    import pytest

    from ingest.real import VILLAGE_MIN_SIZE, RealImagesError, real_images
    from ingest.village.render import render

    assert render(0, size=VILLAGE_MIN_SIZE).image.shape == (VILLAGE_MIN_SIZE, VILLAGE_MIN_SIZE, 3)
    with pytest.raises(RealImagesError, match="folder of images"):
        real_images("village", 2, size=16)
