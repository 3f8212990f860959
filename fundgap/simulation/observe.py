"""How simulated latent quantities become observed files: donation streams and rater scores.

These are the measurement half of the simulator: given each campaign's core and derived
capacity, a donation stream whose window means reproduce them; given latent appeal, two
raters' 0-10 scores per dimension. `prepare` then measures them back as it would real data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def donation_counts(amount_yuan: np.ndarray, core: np.ndarray, derived: np.ndarray,
                    core_window: int = 100, derived_after: int = 300) -> np.ndarray:
    """Number of donations that raises `amount_yuan` when the first `core_window` average
    `core`, the next ones the midpoint, and those after `derived_after` average `derived`
    (capacities in 100 yuan)."""
    total = amount_yuan / 100.0
    middle = (core + derived) / 2
    first = core_window * core
    second = first + (derived_after - core_window) * middle
    count = np.where(
        total <= first, total / core,
        np.where(total <= second, core_window + (total - first) / middle,
                 derived_after + (total - second) / derived))
    return np.maximum(1, np.round(count)).astype(int)


def donation_stream(campaign_ids: np.ndarray, counts: np.ndarray, core: np.ndarray,
                    derived: np.ndarray, rng: np.random.Generator, cap: int = 400,
                    weight_sd: float = 0.9, core_window: int = 100,
                    derived_after: int = 300) -> pd.DataFrame:
    """The first min(count, cap) donations of each campaign (yuan, to the cent).

    Window means are set so that `prepare.donation_capacities` measures `core` and
    `derived` back: donations after `derived_after` average `derived`; for streams too
    short to have any, the donations after the core window average `derived` instead
    (the fallback rule).
    """
    lengths = np.minimum(counts, cap)
    owner = np.repeat(np.arange(len(counts)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    seq = np.arange(lengths.sum()) - starts + 1
    window = np.where(seq <= core_window, 0, np.where(seq <= derived_after, 1, 2))
    short = counts[owner] <= derived_after
    middle = np.where(short, derived[owner], (core[owner] + derived[owner]) / 2)
    target = 100.0 * np.choose(window, [core[owner], middle, derived[owner]])
    weight = np.exp(weight_sd * rng.standard_normal(len(seq)))
    group = owner * 3 + window
    group_mean = np.bincount(group, weights=weight) / np.maximum(np.bincount(group), 1)
    amount = np.maximum(np.round(target * weight / group_mean[group], 2), 0.01)
    return pd.DataFrame({"campaign_id": campaign_ids[owner], "seq": seq, "amount": amount})


def rater_scores(campaign_ids: np.ndarray, rng: np.random.Generator,
                 campaigns_per_rater: tuple[int, int] = (20, 30),
                 dimension_correlation: float = 0.3, noise_sd: float = 1.05,
                 severity_mean: float = 6.0, severity_sd: float = 0.8,
                 scale_range: tuple[float, float] = (0.9, 1.4)) -> pd.DataFrame:
    """Two raters per campaign, each scoring image and text 0-10 (integers).

    Raters come in two groups, so a campaign's two raters differ; each rater gets a random
    block of campaigns, has a severity and a scale, and adds noise to the latent appeal.
    """
    n = len(campaign_ids)
    latent = rng.multivariate_normal(
        [0.0, 0.0], [[1.0, dimension_correlation], [dimension_correlation, 1.0]], size=n)
    rows = []
    for group in ("A", "B"):
        order = rng.permutation(n)
        position, rater = 0, 0
        while position < n:
            size = int(rng.integers(campaigns_per_rater[0], campaigns_per_rater[1] + 1))
            block = order[position:position + size]
            position += size
            rater += 1
            severity = rng.normal(severity_mean, severity_sd)
            scale = rng.uniform(*scale_range)
            for d, dimension in enumerate(("image", "text")):
                raw = severity + scale * (latent[block, d] + rng.normal(0, noise_sd, len(block)))
                scores = np.clip(np.round(raw), 0, 10).astype(int)
                rows.append(pd.DataFrame({"campaign_id": campaign_ids[block],
                                          "rater_id": f"{group}{rater:03d}",
                                          "dimension": dimension, "score": scores}))
    ratings = pd.concat(rows, ignore_index=True)
    return ratings.sort_values(["campaign_id", "rater_id", "dimension"],
                               ignore_index=True)
