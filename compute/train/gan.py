"""Train (or evaluate) the bundled village generator `village-gan` on rendered village scenes.

Reads: the village renderer (`ingest.village.render_batch`); a pre-rendered pool of scenes cached as
.npy under `.cache/village-pool/` (re-rendered from its seeds when missing or when the renderer's
source changes); with --resume, the training state `<out-dir>/state.pt`; with --evaluate-only, the
checkpoints in `ingest/zoo/` and the segmenter `ingest/zoo/village-seg.safetensors`.
Writes: the training state and sample grids to --out-dir (default /work/gan-train/), EMA generator
checkpoints `ingest/zoo/village-gan-step{STEP}.safetensors` at --checkpoint-fractions of --steps and
the final one `ingest/zoo/village-gan.safetensors` (float16), and at every state save the in-repo
resume point `<zoo-dir>/train/village-gan-v2-resume.safetensors` (float16 G, D, EMA, step); --evaluate-only writes the model card
`ingest/zoo/village-gan.md` and `ingest/zoo/village-gan-samples.png`.

    python -m compute.train.gan --steps 4000 --widths small --threads 2      # or: gandissect train gan ...
    python -m compute.train.gan --steps 4000 --widths small --resume          # continue a killed run
    python -m compute.train.gan --steps 30000 --widths default --export-resume --zoo-dir ingest/zoo   # state.pt -> in-repo resume point
    python -m compute.train.gan --evaluate-only                               # model card numbers
    python -m compute.train.gan --steps 30000 --widths default --snapshot --zoo-dir /tmp/v2   # EMA now -> scratch zoo
    python -m compute.train.gan --evaluate-only --zoo-dir /tmp/v2              # ... measured between checkpoints

Recipe: non-saturating logistic loss, lazy R1 penalty on real images, Adam (0.0, 0.99), EMA of the
generator's weights (the EMA generator is what gets saved), pixel norm + equalised learning rate.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from tqdm import tqdm

from compute.train.common import REPO, add_device_arguments, resolve_device
from ingest.models.progan import WIDTH_PRESETS, Discriminator, Generator, save_progan
from ingest.models.safetensors_io import save_safetensors

ZOO = REPO / "ingest" / "zoo"
POOL_SEED_START = 10_000_000  # training scenes: seeds POOL_SEED_START .. + pool_size - 1
SAMPLE_SEED = 7  # fixed latents for the monitoring sample grids
RESUME_POINT_NAME = "train/village-gan-v2-resume.safetensors"  # under --zoo-dir unless --resume-point says
RESUME_NETS = ("G", "D", "G_ema")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gandissect train gan", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4000, help="total generator steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=1, help="seed for weights, latents and pool sampling")
    add_device_arguments(p)
    p.add_argument("--out-dir", default="/work/gan-train/", help="training state, log samples")
    p.add_argument("--zoo-dir", default=str(ZOO), help="where the EMA checkpoints and the model card go")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/state.pt if present")
    p.add_argument("--evaluate-only", action="store_true", help="measure the checkpoints, write the model card")
    p.add_argument("--widths", default="small", choices=sorted(WIDTH_PRESETS))
    p.add_argument("--z-dim", type=int, default=128)
    p.add_argument("--checkpoint-fractions", default="0.05,0.1,0.25,0.5,0.75,1.0")
    p.add_argument("--pool-size", type=int, default=30000, help="pre-rendered training scenes")
    p.add_argument("--pool-dir", default=str(REPO / ".cache" / "village-pool"))
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--r1-gamma", type=float, default=1.0)
    p.add_argument("--r1-every", type=int, default=16)
    p.add_argument("--ema-kimg", type=float, default=10.0, help="EMA half-life in thousands of images")
    p.add_argument("--ema-rampup", type=float, default=0.05,
                   help="EMA half-life is at most this fraction of the images seen so far (StyleGAN2-ADA)")
    p.add_argument("--save-every-s", type=float, default=300.0, help="seconds between training-state saves")
    p.add_argument("--sample-every", type=int, default=250, help="steps between monitoring sample grids")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-samples", type=int, default=2000, help="--evaluate-only: images per set")
    p.add_argument("--segmenter", default=str(ZOO / "village-seg.safetensors"))
    p.add_argument("--resume-point", default=None,
                   help="(default <zoo-dir>/" + RESUME_POINT_NAME + ") in-repo resume point (G, D, EMA weights, step; float16): written at every state save, "
                        "read by --resume when <out-dir>/state.pt is gone (optimiser moments restart)")
    p.add_argument("--export-resume", action="store_true",
                   help="write --resume-point from <out-dir>/state.pt and exit (for a run started without it)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: convolutions in bfloat16 autocast with channels-last tensors (weights, optimisers and "
                        "the lazy R1 step stay float32); 3.3x faster on CPUs with AMX, also on CUDA")
    p.add_argument("--snapshot", action="store_true",
                   help="write the EMA generator of <out-dir>/state.pt (else of --resume-point) into --zoo-dir as "
                        "village-gan.safetensors and village-gan-step{STEP}.safetensors, then exit: measure a run "
                        "between checkpoints with --evaluate-only --zoo-dir (refuses the bundled zoo)")
    a = p.parse_args(argv)
    if a.resume_point is None:
        a.resume_point = str(Path(a.zoo_dir) / RESUME_POINT_NAME)
    return a


# ---------------------------------------------------------------- data: a pool of rendered scenes

def renderer_hash() -> str:
    """Short hash of the village renderer's source (render.py and the concepts it imports, the code that makes
    the pixels): a changed world invalidates cached pools; other modules of the package do not."""
    h = hashlib.sha256()
    for f in (REPO / "ingest" / "village" / "concepts.py", REPO / "ingest" / "village" / "render.py"):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def _render_chunk(seeds: list[int]) -> np.ndarray:
    from ingest.village import render_batch

    return render_batch(seeds)[0]


def render_images(start: int, n: int, workers: int = 1, desc: str = "render") -> np.ndarray:
    """Images of scenes start..start+n-1: uint8 [n, 64, 64, 3], rendered in chunks on `workers` processes."""
    chunks = [list(range(s, min(s + 500, start + n))) for s in range(start, start + n, 500)]
    out = []
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as ex:
            for a in tqdm(ex.map(_render_chunk, chunks), total=len(chunks), desc=desc, mininterval=10):
                out.append(a)
    else:
        for c in tqdm(chunks, desc=desc, mininterval=10, disable=len(chunks) < 4):
            out.append(_render_chunk(c))
    return np.concatenate(out) if out else np.zeros((0, 64, 64, 3), np.uint8)


def load_pool(n: int, pool_dir: str | Path, workers: int = 1, start: int = POOL_SEED_START) -> np.ndarray:
    """The training pool (uint8 [n, 64, 64, 3]), cached as .npy keyed by seeds and renderer hash."""
    path = Path(pool_dir) / f"pool-{start}-{n}-{renderer_hash()}.npy"
    if path.exists():
        return np.load(path, mmap_mode=None)
    t0 = time.time()
    images = render_images(start, n, workers, desc="render pool")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, images)
    tmp.replace(path)
    print(f"rendered pool of {n} scenes (seeds {start}..{start + n - 1}) in {time.time() - t0:.0f}s -> {path}",
          flush=True)
    return images


def to_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path: str | Path, cols: int = 8, scale: int = 2) -> Path:
    """Tile uint8 [N, H, W, 3] images into one PNG (nearest-upscaled by `scale`)."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i in range(n):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = images[i]
    img = Image.fromarray(out)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


# ---------------------------------------------------------------- training

def checkpoint_steps(steps: int, fractions: str) -> list[int]:
    return sorted({max(1, int(round(float(f) * steps))) for f in fractions.split(",") if f.strip()})


def ema_decay(step: int, a: argparse.Namespace) -> float:
    """Per-step EMA decay: half-life min(ema_kimg * 1000, ema_rampup * images seen) images."""
    half_life = max(min(a.ema_kimg * 1000, a.ema_rampup * step * a.batch), 1e-8)
    return 0.5 ** (a.batch / half_life)


@torch.no_grad()
def ema_update(g_ema: Generator, g: Generator, decay: float) -> None:
    for pe, p in zip(g_ema.parameters(), g.parameters()):
        pe.lerp_(p, 1.0 - decay)


def autocast(device: torch.device, precision: str, enabled: bool = True) -> torch.autocast:
    """bfloat16 autocast for --precision bf16 (a no-op context for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and precision == "bf16")


def d_step(G: Generator, D: Discriminator, opt_d: torch.optim.Optimizer, real: torch.Tensor, z: torch.Tensor,
           r1_gamma: float, r1_every: int, do_r1: bool, precision: str = "fp32") -> tuple[float, float]:
    """One discriminator step (logistic loss; R1 on real images when `do_r1`). Returns (loss, r1).

    With precision "bf16" the passes run under bfloat16 autocast, except a step with R1 (every r1_every-th),
    whose gradient penalty needs float32 second derivatives."""
    with torch.no_grad(), autocast(real.device, precision):
        fake = G(z)
    real = real.detach().requires_grad_(do_r1)
    with autocast(real.device, precision, enabled=not do_r1):
        logits_real, logits_fake = D(real).float(), D(fake.float()).float()
    loss = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
    r1 = torch.zeros(())
    total = loss
    if do_r1:
        (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=(1, 2, 3)).mean()
        total = loss + r1 * (r1_gamma / 2 * r1_every)
    opt_d.zero_grad(set_to_none=True)
    total.backward()
    opt_d.step()
    return float(loss.detach()), float(r1.detach())


def g_step(G: Generator, D: Discriminator, opt_g: torch.optim.Optimizer, z: torch.Tensor,
           precision: str = "fp32") -> float:
    """One generator step (non-saturating logistic loss). Returns the loss."""
    D.requires_grad_(False)
    with autocast(z.device, precision):
        loss = F.softplus(-D(G(z)).float()).mean()
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    D.requires_grad_(True)
    return float(loss.detach())


def build(a: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(a.seed)
    widths = WIDTH_PRESETS[a.widths]
    G = Generator(z_dim=a.z_dim, widths=widths).to(device)
    G.output.clamp = False  # the raw output gets gradients everywhere; the saved generator clamps
    D = Discriminator(widths).to(device)
    G_ema = deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=a.lr, betas=(0.0, 0.99), eps=1e-8)
    c = a.r1_every / (a.r1_every + 1)  # lazy-regularisation correction of D's lr and betas (StyleGAN2)
    opt_d = torch.optim.Adam(D.parameters(), lr=a.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
    gen = torch.Generator().manual_seed(a.seed)
    return {"G": G, "D": D, "G_ema": G_ema, "opt_g": opt_g, "opt_d": opt_d, "gen": gen, "step": 0, "elapsed": 0.0,
            "provenance": Provenance()}


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from: the steps at which training continued from an in-repo resume point
    (weights only, optimiser moments restarted), recorded since step `since` (0: since the first step;
    a resume point written before this was recorded starts the record at the step it was read)."""
    resumed_at: tuple[int, ...] = ()
    since: int = 0
    precision: tuple[tuple[int, str], ...] = ()  # (first step, precision) of each stretch of training

    def resumed(self, step: int, known: bool) -> "Provenance":
        return Provenance((*self.resumed_at, step), self.since if known else step, self.precision)

    def trained_with(self, step: int, precision: str) -> "Provenance":
        """Record that the steps after `step` run at `precision` (a new stretch only when it changes)."""
        if self.precision and self.precision[-1][1] == precision:
            return self
        return Provenance(self.resumed_at, self.since, (*self.precision, (step + 1, precision)))

    def to_meta(self) -> dict[str, str]:
        return {"resumed_at": json.dumps(list(self.resumed_at)), "provenance_since": str(self.since),
                "precision_from": json.dumps([list(p) for p in self.precision])}

    @staticmethod
    def from_meta(meta: dict[str, str]) -> "Provenance | None":
        """None when the metadata predates provenance records."""
        if "resumed_at" not in meta:
            return None
        return Provenance(tuple(int(s) for s in json.loads(meta["resumed_at"])), int(meta.get("provenance_since", 0)),
                          tuple((int(s), str(p)) for s, p in json.loads(meta.get("precision_from", "[]"))))

    def describe(self) -> str:
        where = ", ".join(str(s) for s in self.resumed_at) or "none"
        since = f" (recorded since step {self.since}; earlier resumes are not recorded)" if self.since else ""
        stretches = "; ".join(f"{p} from step {s}" for s, p in self.precision)
        return (f"continued from in-repo resume points (weights only, optimisers restarted) at steps: {where}{since}"
                + (f"; precision: {stretches}" if stretches else ""))


def save_state(st: dict, a: argparse.Namespace, path: Path) -> None:
    """Full training state (weights, optimisers, step, RNG) -> path, atomically; torch.load(weights_only)-safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"G": st["G"].state_dict(), "D": st["D"].state_dict(), "G_ema": st["G_ema"].state_dict(),
            "opt_g": st["opt_g"].state_dict(), "opt_d": st["opt_d"].state_dict(), "step": st["step"],
            "elapsed": st["elapsed"], "gen": st["gen"].get_state(), "torch_rng": torch.get_rng_state(),
            "config": _config(a), "provenance": st["provenance"].to_meta()}
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_state(st: dict, a: argparse.Namespace, path: Path) -> None:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    want = _config(a)
    if blob["config"] != want:
        raise ValueError(f"--resume: {path} was trained with {blob['config']}, arguments say {want}")
    for k in ("G", "D", "G_ema", "opt_g", "opt_d"):
        st[k].load_state_dict(blob[k])
    st["step"], st["elapsed"] = int(blob["step"]), float(blob["elapsed"])
    st["gen"].set_state(blob["gen"])
    torch.set_rng_state(blob["torch_rng"])
    st["provenance"] = Provenance.from_meta(blob.get("provenance", {})) or Provenance(since=st["step"])


def _config(a: argparse.Namespace) -> dict:
    return {"widths": a.widths, "z_dim": a.z_dim, "seed": a.seed, "batch": a.batch, "pool_size": a.pool_size}


def save_resume_point(nets: dict[str, dict[str, torch.Tensor]], step: int, elapsed: float,
                      config: dict, path: Path, provenance: Provenance | None = None) -> Path:
    """G, D and EMA weights (float16) + step + config -> one safetensors file, atomically (a few MB, committed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{k}.{name}": t.detach().to("cpu", torch.float16).contiguous()
               for k in RESUME_NETS for name, t in nets[k].items()}
    meta = {"step": str(step), "elapsed": f"{elapsed:.0f}", "config": json.dumps(config, sort_keys=True),
            "format": "gandissect-gan-resume", **(provenance or Provenance(since=step)).to_meta()}
    return save_safetensors(tensors, path, meta)


def load_resume_point(st: dict, a: argparse.Namespace, path: Path) -> None:
    """Weights and step from an in-repo resume point into a freshly built state; optimisers and RNG restart."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        cfg = json.loads(meta["config"])
        if cfg != _config(a):
            raise ValueError(f"--resume: {path} was trained with {cfg}, arguments say {_config(a)}")
        for k in RESUME_NETS:
            sd = st[k].state_dict()
            st[k].load_state_dict({n: f.get_tensor(f"{k}.{n}").to(sd[n].dtype) for n in sd})
    st["step"], st["elapsed"] = int(meta["step"]), float(meta["elapsed"])
    st["gen"].manual_seed(a.seed * 1_000_003 + st["step"])  # a fresh but reproducible stream from this point
    known = Provenance.from_meta(meta)
    st["provenance"] = (known or Provenance()).resumed(st["step"], known is not None)


def export_resume(a: argparse.Namespace) -> int:
    state_path = Path(a.out_dir) / "state.pt"
    blob = torch.load(state_path, map_location="cpu", weights_only=True)
    if blob["config"] != _config(a):
        raise ValueError(f"--export-resume: {state_path} was trained with {blob['config']}, arguments say {_config(a)}")
    prov = Provenance.from_meta(blob.get("provenance", {})) or Provenance(since=int(blob["step"]))
    path = save_resume_point(blob, int(blob["step"]), float(blob["elapsed"]), blob["config"], Path(a.resume_point), prov)
    print(f"wrote {path} at step {blob['step']} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def snapshot(a: argparse.Namespace) -> int:
    """The current EMA generator (state.pt, else the resume point) -> a scratch zoo that --evaluate-only reads."""
    zoo = Path(a.zoo_dir)
    if zoo.resolve() == ZOO.resolve():
        raise ValueError(f"--snapshot: {zoo} is the bundled zoo, whose checkpoint glob the demo spec reads; "
                         "name a scratch --zoo-dir")
    st = build(a, torch.device("cpu"))
    state_path = Path(a.out_dir) / "state.pt"
    if state_path.exists():
        load_state(st, a, state_path)
        source = state_path
    elif Path(a.resume_point).exists():
        load_resume_point(st, a, Path(a.resume_point))
        st["provenance"] = Provenance(st["provenance"].resumed_at[:-1], st["provenance"].since)  # read, not resumed
        source = Path(a.resume_point)
    else:
        raise FileNotFoundError(f"--snapshot: neither {state_path} nor {a.resume_point} exists")
    g_out = deepcopy(st["G_ema"]).cpu()
    g_out.output.clamp = True
    meta = {**_run_meta(a), "train_seconds": f"{st['elapsed']:.0f}", "snapshot_of": str(source),
            **st["provenance"].to_meta()}
    for name in (f"village-gan-step{st['step']}.safetensors", "village-gan.safetensors"):
        print(f"wrote {save_progan(g_out, zoo / name, st['step'], meta)} (EMA at step {st['step']} of {source})")
    return 0


def _run_meta(a: argparse.Namespace) -> dict[str, str]:
    """The checkpoint metadata every saved generator of this run carries."""
    return {"seed": str(a.seed), "total_steps": str(a.steps), "batch": str(a.batch), "widths_preset": a.widths,
            "pool_size": str(a.pool_size), "threads": str(torch.get_num_threads()),
            "pool_seed_start": str(POOL_SEED_START), "renderer": renderer_hash()}


def train(a: argparse.Namespace) -> int:
    device = resolve_device(a.device)
    out_dir, zoo = Path(a.out_dir), Path(a.zoo_dir)
    state_path = out_dir / "state.pt"
    st = build(a, device)
    if a.resume and state_path.exists():
        load_state(st, a, state_path)
        print(f"resumed from {state_path} at step {st['step']} ({st['elapsed']:.0f}s trained)", flush=True)
    elif a.resume and Path(a.resume_point).exists():
        load_resume_point(st, a, Path(a.resume_point))
        print(f"resumed from the in-repo resume point {a.resume_point} at step {st['step']} "
              f"(weights only: optimiser moments restart)", flush=True)
    print(f"train village-gan: seed={a.seed} steps={a.steps} batch={a.batch} widths={a.widths} "
          f"{WIDTH_PRESETS[a.widths]} z_dim={a.z_dim} lr={a.lr} r1_gamma={a.r1_gamma}/{a.r1_every} "
          f"ema={a.ema_kimg}kimg/rampup {a.ema_rampup} precision={a.precision} device={device} threads={torch.get_num_threads()} pool={a.pool_size} "
          f"(seeds {POOL_SEED_START}..{POOL_SEED_START + a.pool_size - 1})", flush=True)
    pool = torch.from_numpy(load_pool(a.pool_size, a.pool_dir, workers=max(1, torch.get_num_threads())))
    G, D, G_ema, gen = st["G"], st["D"], st["G_ema"], st["gen"]
    fmt = torch.channels_last if a.precision == "bf16" else torch.contiguous_format
    for net in (G, D, G_ema):
        net.to(memory_format=fmt)
    st["provenance"] = st["provenance"].trained_with(st["step"], a.precision)
    z_fixed = torch.randn(64, a.z_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED)).to(device)
    ckpts = checkpoint_steps(a.steps, a.checkpoint_fractions)
    meta = _run_meta(a)
    t_start, elapsed0, last_save = time.time(), st["elapsed"], time.time()
    window: list[float] = []
    bar = tqdm(total=a.steps, initial=st["step"], desc="train gan", mininterval=30, file=sys.stdout)
    while st["step"] < a.steps:
        t0 = time.time()
        step = st["step"] + 1
        idx = torch.randint(0, len(pool), (a.batch,), generator=gen)
        real = to_input(pool[idx]).to(device).contiguous(memory_format=fmt)
        z1 = torch.randn(a.batch, a.z_dim, generator=gen).to(device)
        z2 = torch.randn(a.batch, a.z_dim, generator=gen).to(device)
        d_loss, r1 = d_step(G, D, st["opt_d"], real, z1, a.r1_gamma, a.r1_every, step % a.r1_every == 0, a.precision)
        g_loss = g_step(G, D, st["opt_g"], z2, a.precision)
        ema_update(G_ema, G, ema_decay(step, a))
        st["step"] = step
        st["elapsed"] = elapsed0 + time.time() - t_start
        window = (window + [time.time() - t0])[-50:]
        bar.update(1)
        if not (math.isfinite(d_loss) and math.isfinite(g_loss)):
            raise FloatingPointError(f"step {step}: non-finite loss (d={d_loss}, g={g_loss})")
        if step % a.log_every == 0 or step == a.steps:
            spp = sum(window) / len(window)
            tqdm.write(f"step {step}/{a.steps} d_loss {d_loss:.3f} g_loss {g_loss:.3f} r1 {r1:.4f} "
                       f"{spp:.2f} s/step elapsed {st['elapsed'] / 60:.1f} min eta {(a.steps - step) * spp / 60:.1f} min",
                       file=sys.stdout)
            sys.stdout.flush()
        if step % a.sample_every == 0 or step == a.steps:
            with torch.no_grad():
                save_grid(to_uint8(G_ema(z_fixed)), out_dir / f"samples-step{step:06d}.png")
        if step in ckpts:
            g_out = deepcopy(G_ema).cpu()
            g_out.output.clamp = True
            m = {**meta, "train_seconds": f"{st['elapsed']:.0f}", **st["provenance"].to_meta()}
            path = save_progan(g_out, zoo / f"village-gan-step{step}.safetensors", step, m)
            tqdm.write(f"saved {path}", file=sys.stdout)
            if step == a.steps:
                tqdm.write(f"saved {save_progan(g_out, zoo / 'village-gan.safetensors', step, m)}", file=sys.stdout)
        if time.time() - last_save > a.save_every_s or step == a.steps:
            save_state(st, a, state_path)
            save_resume_point({k: st[k].state_dict() for k in RESUME_NETS}, st["step"], st["elapsed"],
                              _config(a), Path(a.resume_point), st["provenance"])
            last_save = time.time()
    bar.close()
    print(f"done: {st['step']} steps, {st['elapsed'] / 60:.1f} min of training", flush=True)
    return 0


# ---------------------------------------------------------------- evaluation (--evaluate-only)

EVAL_SEEDS = (20_000_000, 30_000_000)  # two disjoint rendered sets (A: the reference, B: the floor)
EVAL_LATENT_SEED = 1  # generated images: ingest.samples.latents(1, n, z_dim)
EARLY_FRACTION = 0.1  # "early checkpoint": the first one at or after 10 % of training
BUILDING_PARTS = ("building", "wall", "roof", "dome")
# the bars of the v2 generator, judged on the final checkpoint by the card
FD_BAR = 0.15  # Fréchet distance in segmenter features
FRACTION_BAR = 0.20  # relative difference of each concept's pixel fraction (concepts above 1 % of rendered pixels)
DOOR_PRESENCE_BAR = 0.80  # share of generated images holding a building that show a door
DOOR_RULE_BAR = 0.95  # share of door pixels inside building columns


@torch.no_grad()
def _batched(fn, x: torch.Tensor, device: torch.device, batch: int = 100) -> torch.Tensor:
    out = [fn(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)]
    return torch.cat(out)


@torch.no_grad()
def generate(path: Path, n: int, device: torch.device) -> tuple[torch.Tensor, dict[str, str]]:
    """n images [n, 3, 64, 64] in [-1, 1] from the checkpoint at `path` on latents(EVAL_LATENT_SEED, n)."""
    from ingest.models.progan import load_progan
    from ingest.samples import latents

    g = load_progan(path, device)
    z = latents(EVAL_LATENT_SEED, n, g.z_dim)
    return _batched(g, z, device), dict(g.metadata)


def concept_fractions(labels: torch.Tensor) -> np.ndarray:
    """Label channels Long[N, C, H, W] -> share of pixels carrying each concept index k: float [K]."""
    from ingest.village import CONCEPTS

    return np.array([float((labels == k).any(dim=1).float().mean()) for k in range(len(CONCEPTS))])


def door_rule(labels: torch.Tensor) -> tuple[float, int]:
    """Share of door pixels inside building columns, and the door pixel count.

    Columns are the x-ranges of the connected components (scipy.ndimage.label, 8-connected) of
    building/wall/roof/dome pixels of each image; labels Long[N, C, H, W] are the segmenter's channels.
    """
    from scipy import ndimage

    from ingest.village import INDEX

    lab = labels.numpy()
    bld = np.isin(lab, [INDEX[c] for c in BUILDING_PARTS]).any(axis=1)  # [N, H, W]
    door = (lab == INDEX["door"]).any(axis=1)
    inside = total = 0
    for b, d in zip(bld, door):
        if not d.any():
            continue
        cols = np.zeros(b.shape[1], bool)
        comps, _ = ndimage.label(b, structure=np.ones((3, 3), int))
        for sl in ndimage.find_objects(comps):
            cols[sl[1]] = True
        ys, xs = np.nonzero(d)
        inside += int(cols[xs].sum())
        total += len(xs)
    return (inside / total if total else float("nan")), total


def door_presence(labels: torch.Tensor) -> tuple[float, int]:
    """Share of images holding a building (any building/wall/roof/dome pixel) that show a door pixel, and
    the count of such images; labels Long[N, C, H, W] are the segmenter's channels."""
    from ingest.village import INDEX

    bld = torch.isin(labels, torch.tensor([INDEX[c] for c in BUILDING_PARTS])).flatten(1).any(dim=1)
    door = (labels == INDEX["door"]).flatten(1).any(dim=1)
    n = int(bld.sum())
    return (float((door & bld).sum()) / n if n else float("nan")), n


def _step_of(path: Path) -> int:
    return int(path.stem.rsplit("step", 1)[1])


def evaluate(a: argparse.Namespace) -> int:
    """Measure the bundled checkpoints against rendered scenes; write the model card and sample grid."""
    from compute.core.frechet import frechet_distance
    from ingest.models.village_seg import load_village_seg
    from ingest.village import CONCEPTS

    t0 = time.time()
    device = resolve_device(a.device)
    zoo, n = Path(a.zoo_dir), a.eval_samples
    final = zoo / "village-gan.safetensors"
    steps = sorted(zoo.glob("village-gan-step*.safetensors"), key=_step_of)
    if not final.exists() or not steps:
        raise FileNotFoundError(f"--evaluate-only: need {final} and village-gan-step*.safetensors in {zoo}")
    seg = load_village_seg(a.segmenter, device)
    print(f"evaluate village-gan: {n} images per set, segmenter {a.segmenter}, device {device}", flush=True)
    real_a = to_input(render_images(EVAL_SEEDS[0], n, max(1, torch.get_num_threads()), "render A"))
    real_b = to_input(render_images(EVAL_SEEDS[1], n, max(1, torch.get_num_threads()), "render B"))
    feats = lambda x: _batched(seg.features, x, device).double().numpy()  # noqa: E731
    segment = lambda x: _batched(seg.segment, x, device)  # noqa: E731
    fa, fb = feats(real_a), feats(real_b)
    floor = frechet_distance(fb, fa)
    fd_rows = []
    for p in steps:
        imgs, meta = generate(p, n, device)
        fd_rows.append((_step_of(p), p.name, frechet_distance(feats(imgs), fa), meta.get("total_steps", "?")))
        print(f"  FD {p.name}: {fd_rows[-1][2]:.4g}", flush=True)
    gen, meta = generate(final, n, device)
    fd_final = frechet_distance(feats(gen), fa)
    total_steps = int(meta.get("total_steps", meta["step"]))
    early = next((r for r in fd_rows if r[0] >= EARLY_FRACTION * total_steps), fd_rows[0])
    lab_gen, lab_real = segment(gen), segment(real_a)
    frac_gen, frac_real = concept_fractions(lab_gen), concept_fractions(lab_real)
    door_gen, door_n_gen = door_rule(lab_gen)
    door_real, door_n_real = door_rule(lab_real)
    presence = (*door_presence(lab_gen), *door_presence(lab_real))
    save_grid(to_uint8(gen[:64]), zoo / "village-gan-samples.png")
    card = model_card(a, meta, n, fd_final, early, floor, fd_rows, frac_gen, frac_real,
                      (door_gen, door_n_gen, door_real, door_n_real), presence, time.time() - t0, CONCEPTS)
    (zoo / "village-gan.md").write_text(card)
    print(card, flush=True)
    return 0


def model_card(a, meta, n, fd_final, early, floor, fd_rows, frac_gen, frac_real, door, presence, seconds,
               concepts) -> str:
    widths = meta.get("widths", "?")
    other_plan = [r for r in fd_rows if r[3] != meta.get("total_steps")]
    rows_ok = []
    concept_lines = []
    for k, c in enumerate(concepts):
        if k == 0:
            continue
        rel = (frac_gen[k] - frac_real[k]) / frac_real[k] if frac_real[k] > 0 else float("nan")
        judged = frac_real[k] > 0.01
        ok = judged and abs(rel) <= FRACTION_BAR
        if judged:
            rows_ok.append(ok)
        verdict = ("pass" if ok else "**FAIL**") if judged else "(< 1 %, not judged)"
        concept_lines.append(f"| {c.name} | {c.category} | {100 * frac_real[k]:.2f} % | {100 * frac_gen[k]:.2f} % "
                             f"| {100 * rel:+.1f} % | {verdict} |")
    door_gen, door_n_gen, door_real, door_n_real = door
    door_ok = door_gen >= DOOR_RULE_BAR
    presence_gen, presence_n_gen, presence_real, presence_n_real = presence
    presence_ok = presence_gen >= DOOR_PRESENCE_BAR
    prov = Provenance.from_meta(meta)
    fd_ok = fd_final < early[2]
    all_fracs = all(rows_ok)
    cmd = "python -m compute.train.gan --evaluate-only" + (f" --eval-samples {n}" if n != 2000 else "")
    if Path(a.segmenter).resolve() != (ZOO / "village-seg.safetensors").resolve():
        cmd += f" --segmenter {a.segmenter}"
    if Path(a.zoo_dir).resolve() != ZOO.resolve():
        cmd += f" --zoo-dir {a.zoo_dir}"
    train_cmd = (f"python -m compute.train.gan --steps {meta.get('total_steps')} --batch {meta.get('batch')} "
                 f"--seed {meta.get('seed')} --widths {meta.get('widths_preset')} --threads {meta.get('threads', 1)}")
    secs = meta.get("train_seconds")
    lines = [
        "# village-gan — model card",
        "",
        "A ProGAN-style generator (pixel norm, equalised learning rate, nearest 2x upsampling, 3x3 convs, "
        "LeakyReLU 0.2; children `layer1 ... layer10`, `output`) for 64x64 village scenes, trained by "
        "`compute/train/gan.py` and stored as float16 safetensors (loaded as float32 by "
        "`ingest.models.progan.load_progan`).",
        "",
        "## Training",
        "",
        f"- command: `{train_cmd}` (resumable with `--resume`; state in `/work/gan-train/`)",
        f"- steps: {meta.get('step')} of {meta.get('total_steps')}, batch {meta.get('batch')}, seed {meta.get('seed')}, "
        f"z_dim {meta.get('z_dim')}, widths layer1..layer10 = {widths} (preset `{meta.get('widths_preset')}`)",
        f"- training time: {float(secs) / 60:.0f} min on a shared 2-core CPU" if secs else "- training time: not recorded",
        "- recipe: non-saturating logistic loss, lazy R1 penalty on real images (gamma 1, every 16 steps), "
        "Adam lr 0.002 betas (0.0, 0.99), EMA of generator weights (half-life min(10k images, 5 % of the images "
        "seen), as in StyleGAN2-ADA; the EMA generator is saved), "
        "residual discriminator with minibatch stddev.",
        f"- data: NOT an endless stream. Rendering costs CPU, so a fixed pool of {meta.get('pool_size')} rendered "
        f"scenes (seeds {meta.get('pool_seed_start')} .. {int(meta.get('pool_seed_start', 0)) + int(meta.get('pool_size', 0)) - 1}, "
        f"renderer source hash {meta.get('renderer')}) was rendered once, cached under `.cache/village-pool/`, and "
        "sampled uniformly with replacement; no augmentation.",
        f"- checkpoints (EMA generator): {', '.join(r[1] for r in fd_rows)}",
        f"- provenance: {prov.describe() if prov else 'not recorded (trained before resume points were recorded)'}",
        *([f"- a snapshot of `{meta['snapshot_of']}` (`--snapshot`), not a planned checkpoint"]
          if "snapshot_of" in meta else []),
        *([f"- checkpoints {', '.join(f'{r[0]} (planned --steps {r[3]})' for r in other_plan)} were saved while the "
           "run was planned for a different --steps and later resumed with a new one; resuming restores weights, "
           "optimisers and RNG exactly and --steps only decides which steps are saved, so they lie on the same "
           f"training trajectory as `--steps {meta.get('total_steps')}`, which itself saves steps "
           f"{', '.join(str(s) for s in checkpoint_steps(int(meta.get('total_steps', 0)), a.checkpoint_fractions))}."]
          if other_plan else []),
        "",
        "## Evaluation",
        "",
        f"Produced by `{cmd}` in {seconds / 60:.1f} min ({n} images per set). Generated images use latents "
        f"`ingest.samples.latents({EVAL_LATENT_SEED}, {n}, z_dim)`; rendered set A = seeds {EVAL_SEEDS[0]}.., "
        f"set B = seeds {EVAL_SEEDS[1]}.. (both disjoint from the training pool). Features and labels come from "
        f"the segmenter `village-seg` (`{Path(a.segmenter).name}`): its encoder features for the Fréchet "
        "distance (squared, as FID reports it), its label maps for concept fractions and the door rule.",
        "",
        "Sample grid (64 generated images, final checkpoint): `village-gan-samples.png`.",
        "",
        "### Fréchet distance to rendered scenes (set A), segmenter feature space",
        "",
        "| images | Fréchet distance |",
        "|---|---|",
        f"| final checkpoint (step {meta.get('step')}) | {fd_final:.4g} |",
        f"| early checkpoint ({early[1]}) | {early[2]:.4g} |",
        f"| rendered set B (the floor) | {floor:.4g} |",
        "",
        f"Final below early: {'yes' if fd_ok else '**no**'}; final / floor = {fd_final / floor:.1f}x. "
        f"Bar: <= {FD_BAR}. Result: **{'PASS' if fd_final <= FD_BAR else 'FAIL'}**.",
        "",
        "All checkpoints:",
        "",
        "| checkpoint | step | Fréchet distance |",
        "|---|---|---|",
        *[f"| {name} | {step} | {fd:.4g} |" for step, name, fd, _ in fd_rows],
        "",
        "### Concept pixel fractions (segmenter on both sets)",
        "",
        f"Bar: within ±{100 * FRACTION_BAR:.0f} % relative for every concept above 1 % of rendered pixels. "
        f"Result: **{'PASS' if all_fracs else 'FAIL'}** ({sum(rows_ok)} of {len(rows_ok)} judged concepts within the bar).",
        "",
        "| concept | category | rendered | generated | relative difference | bar |",
        "|---|---|---|---|---|---|",
        *concept_lines,
        "",
        "### World rule: doors inside building columns",
        "",
        "Share of door pixels whose column lies in the x-range of a connected component of "
        f"building/wall/roof/dome pixels (segmenter labels). Bar: >= {100 * DOOR_RULE_BAR:.0f} % on generated images. "
        f"Result: **{'PASS' if door_ok else 'FAIL'}**.",
        "",
        "| images | door pixels | share inside building columns |",
        "|---|---|---|",
        f"| generated | {door_n_gen} | {100 * door_gen:.1f} % |",
        f"| rendered set A | {door_n_real} | {100 * door_real:.1f} % |",
        "",
        "### Doors present where a building is",
        "",
        "Share of images holding a building (any building/wall/roof/dome pixel) that show at least one door "
        f"pixel. Bar: >= {100 * DOOR_PRESENCE_BAR:.0f} % on generated images. "
        f"Result: **{'PASS' if presence_ok else 'FAIL'}**.",
        "",
        "| images | images with a building | share with a door |",
        "|---|---|---|",
        f"| generated | {presence_n_gen} | {100 * presence_gen:.1f} % |",
        f"| rendered set A | {presence_n_real} | {100 * presence_real:.1f} % |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.evaluate_only:
        return evaluate(a)
    if a.export_resume:
        return export_resume(a)
    if a.snapshot:
        return snapshot(a)
    return train(a)


if __name__ == "__main__":
    sys.exit(main())
