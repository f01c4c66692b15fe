"""Omissions: the concepts a photo holds that its reconstruction through the generator lacks.

Reads nothing (the segmenter is passed in); writes nothing (`omission_map` returns an image array).

Per image and concept (the segmenter labels the photo and the reconstruction alike):
`photo_share` and `recon_share` (pixel shares), `recall` = |photo ∩ reconstruction| / |photo| (pixels
of the concept in the photo that the reconstruction still labels with it; None when absent from the
photo). The concept is **present** when photo_share >= `presence_share` (default 0.005, about 20 of
64 x 64 pixels, as the realism analysis counts presence), and **omitted** when present and
recall < `omit_recall` (default 0.5): the generator dropped at least half of it.

Over a set of images (`dropped`): per concept, the images where it is present, the pixel-weighted
recall sum(|photo ∩ rec|) / sum(|photo|) and `dropped` = 1 - that recall, ranked highest first.

    from compute.invert.omissions import concept_rows
    rows = concept_rows(segmenter, photos, reconstructions)      # [N,3,H,W] each, in [-1, 1]
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

PRESENCE_SHARE = 0.005
OMIT_RECALL = 0.5


def concept_stats(masks_photo: torch.Tensor, masks_rec: torch.Tensor) -> dict[str, torch.Tensor]:
    """bool [N, K, H, W] masks of photos and reconstructions -> per image and concept [N, K]:
    photo pixels, reconstruction pixels, pixels in both, and the image's pixel count (scalar)."""
    both = (masks_photo & masks_rec).flatten(2).sum(2)
    return {"photo": masks_photo.flatten(2).sum(2), "recon": masks_rec.flatten(2).sum(2), "both": both,
            "pixels": torch.tensor(masks_photo.shape[2] * masks_photo.shape[3])}


def concept_rows(segmenter: Any, photos: torch.Tensor, recons: torch.Tensor, presence_share: float = PRESENCE_SHARE,
                 omit_recall: float = OMIT_RECALL) -> tuple[list[list[dict[str, Any]]], torch.Tensor, torch.Tensor]:
    """Per image, one dict per concept present in the photo or the reconstruction (concept, category,
    photo_share, recon_share, recall, omitted); and the masks [N, K, H, W] of photos and reconstructions."""
    with torch.no_grad():
        mp, mr = segmenter.concept_masks(photos), segmenter.concept_masks(recons)
    st = concept_stats(mp, mr)
    npx = float(st["pixels"])
    out: list[list[dict[str, Any]]] = []
    for i in range(photos.shape[0]):
        rows = []
        for k, c in enumerate(segmenter.concepts):
            if k == 0 or c.name == "none":
                continue
            p, r, b = int(st["photo"][i, k]), int(st["recon"][i, k]), int(st["both"][i, k])
            if p == 0 and r == 0:
                continue
            share = p / npx
            recall = b / p if p else None
            present = share >= presence_share and p > 0
            rows.append({"concept": c.name, "category": c.category, "photo_share": share, "recon_share": r / npx,
                         "recall": recall, "present": present,
                         "omitted": bool(present and recall is not None and recall < omit_recall)})
        out.append(rows)
    return out, mp, mr


def omitted(rows: list[dict[str, Any]]) -> list[str]:
    """Names of the omitted concepts of one image, most dropped (lowest recall) first."""
    return [r["concept"] for r in sorted((r for r in rows if r["omitted"]), key=lambda r: (r["recall"], r["concept"]))]


def omission_map(photo: np.ndarray, masks_photo: torch.Tensor, masks_rec: torch.Tensor, omitted_idx: list[int]
                 ) -> np.ndarray:
    """uint8 [H, W, 3]: the photo at half brightness, with the pixels of omitted concepts that the
    reconstruction lost in red. photo uint8 [H, W, 3]; masks bool [K, H, W] of one image."""
    img = (photo.astype(np.float32) * 0.5).astype(np.uint8)
    if omitted_idx:
        lost = (masks_photo[omitted_idx] & ~masks_rec[omitted_idx]).any(0).cpu().numpy()
        img[lost] = (np.array([255, 40, 40], np.float32) * 0.8 + photo[lost] * 0.2).astype(np.uint8)
    return img


def dropped(image_rows: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Over a set of images: per concept, images present, omitted, pixel-weighted recall, dropped share;
    highest dropped first (ties: concept name)."""
    acc: dict[str, dict[str, float]] = {}
    for rows in image_rows:
        for r in rows:
            if not r["present"]:
                continue
            a = acc.setdefault(r["concept"], {"images": 0, "omitted": 0, "photo": 0.0, "both": 0.0})
            a["images"] += 1
            a["omitted"] += int(r["omitted"])
            a["photo"] += r["photo_share"]
            a["both"] += r["photo_share"] * r["recall"]
    out = [{"concept": c, "images": int(a["images"]), "omitted": int(a["omitted"]),
            "pixel_recall": a["both"] / a["photo"], "dropped": 1 - a["both"] / a["photo"]} for c, a in acc.items()]
    return sorted(out, key=lambda r: (-r["dropped"], r["concept"]))
