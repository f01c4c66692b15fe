"""GAN training: a tiny GAN trains for a few steps via main(), saves checkpoints, resumes; Fréchet distance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compute.core.frechet import feature_stats, frechet_distance, frechet_from_stats
from compute.train.gan import Provenance, checkpoint_steps, door_presence, door_rule, main
from ingest.models.progan import load_progan, read_metadata
from ingest.village import INDEX


def _args(tmp_path, steps: int) -> list[str]:
    return ["--steps", str(steps), "--batch", "4", "--widths", "tiny", "--z-dim", "16", "--seed", "3",
            "--pool-size", "24", "--pool-dir", str(tmp_path / "pool"), "--out-dir", str(tmp_path / "out"),
            "--zoo-dir", str(tmp_path / "zoo"), "--threads", "1", "--r1-every", "2", "--sample-every", "2",
            "--checkpoint-fractions", "0.5,1.0", "--device", "cpu"]


def test_tiny_gan_trains_saves_and_resumes(tmp_path):
    assert main(_args(tmp_path, 3)) == 0
    zoo = tmp_path / "zoo"
    assert sorted(p.name for p in zoo.iterdir()) == ["train", "village-gan-step2.safetensors",
                                                       "village-gan-step3.safetensors", "village-gan.safetensors"]
    meta = read_metadata(zoo / "village-gan.safetensors")
    assert meta["step"] == "3" and meta["total_steps"] == "3" and meta["seed"] == "3"
    state = torch.load(tmp_path / "out" / "state.pt", weights_only=True)
    assert state["step"] == 3
    assert list((tmp_path / "pool").glob("pool-*-24-*.npy"))
    g3 = load_progan(zoo / "village-gan.safetensors")
    assert g3(torch.randn(2, 16)).shape == (2, 3, 64, 64)

    # resume to 5 steps: continues from step 3 and equals an uninterrupted 5-step run
    assert main(_args(tmp_path, 5) + ["--resume"]) == 0
    assert read_metadata(zoo / "village-gan.safetensors")["step"] == "5"
    resumed = load_progan(zoo / "village-gan.safetensors").state_dict()
    fresh = tmp_path / "fresh"
    assert main(_args(fresh, 5) + ["--pool-dir", str(tmp_path / "pool")]) == 0
    straight = load_progan(fresh / "zoo" / "village-gan.safetensors").state_dict()
    for k in straight:
        assert torch.allclose(resumed[k], straight[k], atol=1e-3), k


def test_evaluate_only_writes_the_model_card(tmp_path):
    from ingest.models.village_seg import VillageSegmenter, save_village_seg

    assert main(_args(tmp_path, 2)) == 0
    torch.manual_seed(0)
    seg_path = tmp_path / "seg.safetensors"
    save_village_seg(VillageSegmenter(), str(seg_path))  # random weights: checks the pipeline, not quality
    assert main(_args(tmp_path, 2) + ["--evaluate-only", "--eval-samples", "8", "--segmenter", str(seg_path)]) == 0
    card = (tmp_path / "zoo" / "village-gan.md").read_text()
    assert "Fréchet distance" in card and "rendered set B (the floor)" in card and "doors inside building" in card
    assert "python -m compute.train.gan --evaluate-only --eval-samples 8" in card
    assert (tmp_path / "zoo" / "village-gan-samples.png").stat().st_size > 0


def test_bf16_training_runs_r1_in_float32_and_saves_float_weights(tmp_path):
    """--precision bf16 trains (R1 steps included, r1-every 2), saves contiguous float16 checkpoints like fp32."""
    assert main(_args(tmp_path, 4) + ["--precision", "bf16"]) == 0
    g = load_progan(tmp_path / "zoo" / "village-gan.safetensors")
    x = g(torch.randn(2, 16))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    state = torch.load(tmp_path / "out" / "state.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["G"].values() if v.is_floating_point())


def test_resume_refuses_a_different_configuration(tmp_path):
    assert main(_args(tmp_path, 1)) == 0
    with pytest.raises(ValueError, match="--resume"):
        main(_args(tmp_path, 2) + ["--resume", "--seed", "4"])


def test_in_repo_resume_point_continues_when_the_exact_state_is_gone(tmp_path):
    """The committed resume point (float16 G, D, EMA + step) restarts training after state.pt is lost."""
    from safetensors import safe_open

    assert main(_args(tmp_path, 3)) == 0
    point = tmp_path / "zoo" / "train" / "village-gan-v2-resume.safetensors"
    with safe_open(str(point), framework="pt") as f:
        assert f.metadata()["step"] == "3"
        names = list(f.keys())
        ema_point = {n[len("G_ema."):]: f.get_tensor(n).float() for n in names if n.startswith("G_ema.")}
    assert {n.split(".")[0] for n in names} == {"G", "D", "G_ema"}
    ema3 = load_progan(tmp_path / "zoo" / "village-gan.safetensors").state_dict()
    for k, v in ema3.items():  # the point's EMA generator is the step-3 checkpoint
        assert torch.equal(ema_point[k], v), k

    (tmp_path / "out" / "state.pt").unlink()
    (tmp_path / "zoo" / "village-gan.safetensors").unlink()
    assert main(_args(tmp_path, 5) + ["--resume"]) == 0
    assert read_metadata(tmp_path / "zoo" / "village-gan.safetensors")["step"] == "5"
    with safe_open(str(point), framework="pt") as f:
        assert f.metadata()["step"] == "5"

    # --export-resume rebuilds the point from state.pt; a different configuration is refused
    point.unlink()
    assert main(_args(tmp_path, 5) + ["--export-resume"]) == 0
    with safe_open(str(point), framework="pt") as f:
        assert f.metadata()["step"] == "5"
    (tmp_path / "out" / "state.pt").unlink()
    with pytest.raises(ValueError, match="--resume"):
        main(_args(tmp_path, 6) + ["--resume", "--seed", "4"])


def test_resume_points_are_recorded_in_the_weights_provenance(tmp_path):
    """Each continuation from the in-repo point is recorded, carried through state.pt, and reaches the checkpoints."""
    point = tmp_path / "zoo" / "train" / "village-gan-v2-resume.safetensors"
    assert main(_args(tmp_path, 2)) == 0
    assert Provenance.from_meta(read_metadata(point)) == Provenance((), 0, ((1, "fp32"),))
    (tmp_path / "out" / "state.pt").unlink()
    assert main(_args(tmp_path, 4) + ["--resume"]) == 0  # from the point at step 2
    assert main(_args(tmp_path, 5) + ["--resume"]) == 0  # from state.pt: exact, not a weights-only resume
    (tmp_path / "out" / "state.pt").unlink()
    assert main(_args(tmp_path, 6) + ["--resume", "--precision", "bf16"]) == 0  # from the point at step 5, in bf16
    meta = read_metadata(tmp_path / "zoo" / "village-gan.safetensors")
    assert Provenance.from_meta(meta) == Provenance((2, 5), 0, ((1, "fp32"), (6, "bf16")))
    assert "bf16 from step 6" in Provenance.from_meta(meta).describe()
    # a point written before provenance was recorded starts the record where it is read
    assert Provenance().resumed(7, known=False) == Provenance((7,), 7)
    assert "since step 7" in Provenance((7,), 7).describe()


def test_snapshot_writes_the_current_ema_into_a_scratch_zoo_only(tmp_path):
    from ingest.models.village_seg import VillageSegmenter, save_village_seg

    assert main(_args(tmp_path, 3)) == 0
    scratch = tmp_path / "scratch"
    assert main(_args(tmp_path, 10) + ["--snapshot", "--zoo-dir", str(scratch)]) == 0
    snap = load_progan(scratch / "village-gan-step3.safetensors").state_dict()
    ema3 = load_progan(tmp_path / "zoo" / "village-gan.safetensors").state_dict()
    assert all(torch.equal(snap[k], ema3[k]) for k in ema3)
    meta = read_metadata(scratch / "village-gan.safetensors")
    assert meta["total_steps"] == "10" and meta["snapshot_of"].endswith("state.pt")
    # without state.pt the resume point serves (it was given explicitly: the scratch zoo has none)
    (tmp_path / "out" / "state.pt").unlink()
    point = tmp_path / "zoo" / "train" / "village-gan-v2-resume.safetensors"
    assert main(_args(tmp_path, 10) + ["--snapshot", "--zoo-dir", str(scratch), "--resume-point", str(point)]) == 0
    assert read_metadata(scratch / "village-gan.safetensors")["snapshot_of"] == str(point)
    # the card can be written from the scratch zoo
    seg_path = tmp_path / "seg.safetensors"
    torch.manual_seed(0)
    save_village_seg(VillageSegmenter(), str(seg_path))
    assert main(_args(tmp_path, 10) + ["--evaluate-only", "--zoo-dir", str(scratch), "--eval-samples", "8",
                                       "--segmenter", str(seg_path)]) == 0
    card = (scratch / "village-gan.md").read_text()
    assert "--snapshot" in card and "Doors present where a building is" in card and "provenance:" in card
    # the bundled zoo is refused
    with pytest.raises(ValueError, match="bundled zoo"):
        main(_args(tmp_path, 10) + ["--snapshot", "--zoo-dir", str(Path(__file__).parents[2] / "ingest" / "zoo")])


def test_door_presence_counts_images_with_a_building():
    lab = torch.zeros(3, 3, 8, 8, dtype=torch.long)
    lab[0, 0, :4] = INDEX["wall"]
    lab[0, 1, 2:4, 2] = INDEX["door"]  # building with a door
    lab[1, 0, :4] = INDEX["roof"]  # building without a door
    lab[2, 0] = INDEX["sky"]  # no building: not counted
    share, n = door_presence(lab)
    assert n == 2 and share == pytest.approx(0.5)


def test_checkpoint_steps():
    assert checkpoint_steps(1000, "0.05,0.1,0.25,0.5,0.75,1.0") == [50, 100, 250, 500, 750, 1000]
    assert checkpoint_steps(3, "0.1,1.0") == [1, 3]


def test_door_rule_counts_door_pixels_inside_building_columns():
    lab = torch.zeros(2, 3, 64, 64, dtype=torch.long)
    lab[0, 1, 30:50, 10:20] = INDEX["wall"]
    lab[0, 1, 40:50, 12:15] = INDEX["door"]  # 30 door pixels inside the column x 10..19
    lab[1, 0, 20:50, 40:50] = INDEX["building"]
    lab[1, 1, 45:50, 30:32] = INDEX["door"]  # 10 door pixels outside (x 30..31)
    share, n = door_rule(lab)
    assert n == 40 and share == pytest.approx(30 / 40)


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    mu, s = feature_stats(x)
    assert frechet_from_stats(mu, s, mu, s) == pytest.approx(0.0, abs=1e-6)


def test_frechet_matches_closed_form():
    # diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # and from samples, approximately
    rng = np.random.default_rng(1)
    x = mu1 + rng.normal(size=(200_000, 3)) * np.sqrt(a)
    y = mu2 + rng.normal(size=(200_000, 3)) * np.sqrt(b)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.02)
