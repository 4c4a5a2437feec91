"""CelebA's label structure as a Gaussian copula: the maths, in numpy and scipy only.

Each image gets a latent standard-normal vector ``z`` (40 values, correlation matrix ``R``);
attribute ``i`` is positive when ``z_i > Φ⁻¹(1 - rate_i)``, so every attribute has CelebA's
positive rate. ``R`` is fitted pair by pair so that the bivariate normal orthant probability
``P(z_i > t_i, z_j > t_j)`` equals CelebA's joint positive rate of the pair (which its rates
and its phi fix), then repaired to the nearest correlation matrix (Higham 2002), because
pairwise fits need not make a positive semidefinite whole.

The statistics come from real CelebA and ship with the package (``celeba_statistics/``, see
its README): ``positive_rates.tsv`` (rates over CelebA's 202,599 images) and ``phi.csv`` (the
40x40 Pearson correlation of the ±1 labels of the first 20,000 images of
``list_attr_celeba.txt``). The fitted ``R`` ships as ``latent_correlation.csv``; run
``python -m mtl_celeba.data.label_model`` to refit it (a few seconds).
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path
from statistics import NormalDist

import numpy as np

from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES

STATISTICS_DIR = Path(__file__).with_name("celeba_statistics")
RATES_FILE = STATISTICS_DIR / "positive_rates.tsv"
PHI_FILE = STATISTICS_DIR / "phi.csv"
LATENT_FILE = STATISTICS_DIR / "copula.csv"
#: Latent correlations stay inside (-LIMIT, LIMIT): a joint rate outside what a bivariate
#: normal can give (CelebA's rounded rates make a few pairs' joints slightly negative) gets
#: the nearest value it can.
LIMIT = 0.995


def read_positive_rates(path: Path = RATES_FILE) -> np.ndarray:
    """The 40 positive rates in CelebA's column order (columns index, name, rate)."""
    rates = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        _, name, rate = line.split("\t")
        rates[name] = float(rate)
    return np.array([rates[name] for name in CELEBA_ATTRIBUTES])


def read_matrix(path: Path) -> np.ndarray:
    """A 40x40 CSV with CelebA's names as header row and first column, in CelebA's order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")[1:]
    rows = {line.split(",")[0]: [float(v) for v in line.split(",")[1:]] for line in lines[1:]}
    order = [header.index(name) for name in CELEBA_ATTRIBUTES]
    return np.array([[rows[name][j] for j in order] for name in CELEBA_ATTRIBUTES])


def joint_positive_rates(rates: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """``P(a and b)`` for every pair: ``p_a p_b + phi_ab sqrt(p_a (1-p_a) p_b (1-p_b))``."""
    spread = np.sqrt(rates * (1 - rates))
    return np.outer(rates, rates) + phi * np.outer(spread, spread)


def phi_of(rates: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """The phi matrix that positive rates and joint positive rates give (inverse of the above)."""
    spread = np.sqrt(rates * (1 - rates))
    return (joint - np.outer(rates, rates)) / np.outer(spread, spread)


def orthant(rate_a: np.ndarray, rate_b: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``P(z_a > t_a, z_b > t_b)`` for standard normals with correlation ``rho`` and thresholds
    ``t = Φ⁻¹(1 - rate)``, elementwise: Owen's T form of the bivariate normal (rates not 0.5)."""
    from scipy import special, stats

    h, k = stats.norm.ppf(rate_a), stats.norm.ppf(rate_b)
    root = np.sqrt(1 - np.square(rho))
    beta = np.where(h * k > 0, 0.0, 0.5)
    return (
        0.5 * (stats.norm.cdf(h) + stats.norm.cdf(k))
        - special.owens_t(h, (k - rho * h) / (h * root))
        - special.owens_t(k, (h - rho * k) / (k * root))
        - beta
    )


def pair_correlation(rate_a: float, rate_b: float, joint: float) -> float:
    """The latent correlation whose orthant probability is ``joint`` (clipped to ±LIMIT)."""
    from scipy import optimize

    def gap(r: float) -> float:
        return float(orthant(np.asarray(rate_a), np.asarray(rate_b), np.asarray(r))) - joint

    if gap(-LIMIT) >= 0:
        return -LIMIT
    if gap(LIMIT) <= 0:
        return LIMIT
    return float(optimize.brentq(gap, -LIMIT, LIMIT, xtol=1e-9))


def model_phi(rates: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """The phi matrix of the copula with these rates and latent correlation (exact, no sampling)."""
    pa, pb = np.meshgrid(rates, rates, indexing="ij")
    rho = np.clip(latent, -LIMIT, LIMIT)
    joint = orthant(pa, pb, rho)
    np.fill_diagonal(joint, rates)
    return phi_of(rates, joint)


def nearest_correlation(
    matrix: np.ndarray, floor: float = 1e-4, iterations: int = 200
) -> np.ndarray:
    """The nearest correlation matrix (Higham 2002: alternating projections with Dykstra's
    correction), with every eigenvalue at least ``floor`` so it has a Cholesky factor."""
    y = matrix.copy()
    correction = np.zeros_like(matrix)
    for _ in range(iterations):
        r = y - correction
        values, vectors = np.linalg.eigh(r)
        x = (vectors * np.maximum(values, floor)) @ vectors.T
        correction = x - r
        y = x.copy()
        np.fill_diagonal(y, 1.0)
        if np.linalg.eigvalsh(y).min() >= floor / 2 and np.abs(y - x).max() < 1e-9:
            break
    values, vectors = np.linalg.eigh((y + y.T) / 2)
    y = (vectors * np.maximum(values, floor)) @ vectors.T
    scale = 1 / np.sqrt(np.diag(y))
    return y * np.outer(scale, scale)


_INDEX = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
#: At most one of these per face, the one furthest above its threshold (faces.py draws one colour).
HAIR_COLOURS = tuple(_INDEX[n] for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"))
#: A bald face has no hair to colour, wave, straighten or cut into bangs (grey fringes stay).
BALD_EXCLUDES = tuple(
    _INDEX[n]
    for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Wavy_Hair", "Straight_Hair", "Bangs")
)
#: Facial hair: drawn on men only.
FACIAL_HAIR = tuple(_INDEX[n] for n in ("5_o_Clock_Shadow", "Goatee", "Mustache", "Sideburns"))
BALD, WAVY, STRAIGHT = _INDEX["Bald"], _INDEX["Wavy_Hair"], _INDEX["Straight_Hair"]
MALE, NO_BEARD, GOATEE, MUSTACHE = (
    _INDEX["Male"], _INDEX["No_Beard"], _INDEX["Goatee"], _INDEX["Mustache"]
)  # fmt: skip


def drawable(margins: np.ndarray) -> np.ndarray:
    """Labels (bool, same shape) from latent margins, made drawable where CelebA itself (almost)
    never has both: one named hair colour at most; a bald head without coloured, wavy or
    straight hair or bangs; wavy or straight, not both (the larger margin wins each time);
    facial hair and beards on men only; a goatee or moustache is not No_Beard."""
    labels = margins > 0
    m = np.where(labels, margins, -np.inf)
    colours = m[:, HAIR_COLOURS]
    best = np.argmax(colours, axis=1)
    keep = np.zeros_like(colours, dtype=bool)
    keep[np.arange(len(m)), best] = True
    labels[:, HAIR_COLOURS] &= keep
    rival = np.max(np.where(labels[:, BALD_EXCLUDES], margins[:, BALD_EXCLUDES], -np.inf), axis=1)
    bald_wins = labels[:, BALD] & (margins[:, BALD] > rival)
    labels[:, BALD] = bald_wins | (labels[:, BALD] & ~np.isfinite(rival))
    labels[np.ix_(bald_wins, BALD_EXCLUDES)] = False
    both = labels[:, WAVY] & labels[:, STRAIGHT]
    wavy_wins = margins[:, WAVY] > margins[:, STRAIGHT]
    labels[both & wavy_wins, STRAIGHT] = False
    labels[both & ~wavy_wins, WAVY] = False
    female = ~labels[:, MALE]
    labels[np.ix_(female, FACIAL_HAIR)] = False
    labels[female, NO_BEARD] = True
    labels[labels[:, GOATEE] | labels[:, MUSTACHE], NO_BEARD] = False
    return labels


def _rates_and_phi(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = labels.astype(np.float64)
    rates = x.mean(axis=0)
    return rates, phi_of(rates, x.T @ x / len(x))


def _density(h: np.ndarray, k: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """The bivariate normal density at (h, k): d orthant / d rho (Plackett's identity)."""
    one = 1 - np.square(rho)
    return np.exp(-(h * h - 2 * rho * h * k + k * k) / (2 * one)) / (2 * np.pi * np.sqrt(one))


def fit_latent(
    rates: np.ndarray, phi: np.ndarray, start: np.ndarray, floor: float = 1e-4
) -> np.ndarray:
    """The latent correlation matrix whose copula phi is nearest ``phi`` (least fourth powers
    over the pairs, which keeps the largest errors small), a correlation matrix by construction: ``R = U U^T`` with unit rows ``U``,
    optimised by L-BFGS from ``start`` with the exact gradient; eigenvalues kept >= ``floor``."""
    from scipy import optimize, stats

    n = len(rates)
    upper = np.triu_indices(n, 1)
    h, k = stats.norm.ppf(rates)[upper[0]], stats.norm.ppf(rates)[upper[1]]
    spread = np.sqrt(rates * (1 - rates))
    scale = (spread[:, None] * spread[None, :])[upper]
    base = (rates[:, None] * rates[None, :])[upper]
    goal = phi[upper]

    def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
        b = flat.reshape(n, n)
        norms = np.linalg.norm(b, axis=1, keepdims=True)
        u = b / norms
        rho = np.clip((u @ u.T)[upper], -1 + 1e-9, 1 - 1e-9)
        error = (orthant(rates[upper[0]], rates[upper[1]], rho) - base) / scale - goal
        g = np.zeros((n, n))
        g[upper] = 4 * error**3 / scale * _density(h, k, rho)
        g = g + g.T
        grad_u = g @ u
        grad_b = (grad_u - u * np.sum(grad_u * u, axis=1, keepdims=True)) / norms
        return float(np.sum(error**4)), grad_b.ravel()

    begin = np.linalg.cholesky((1 - floor) * start + floor * np.eye(n))
    result = optimize.minimize(
        loss,
        begin.ravel(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 3000, "gtol": 1e-10, "ftol": 1e-14},
    )
    u = result.x.reshape(n, n)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return (1 - floor) * (u @ u.T) + floor * np.eye(n)


def fit_copula(
    rates: np.ndarray, phi: np.ndarray, rounds: int = 8, samples: int = 200_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The copula's (latent rates, latent correlation) whose :func:`drawable` labels have these
    positive rates and phi.

    Start from the pairwise fits, repaired (:func:`nearest_correlation`); then ``rounds``
    rounds: :func:`fit_latent` to the current phi goal, ``samples`` fixed seeded latent draws
    made drawable, and each latent rate and phi goal moved by the remaining error of the
    drawable labels against CelebA's (what :func:`drawable` changes, the copula makes up).
    """
    from scipy import stats

    joint = joint_positive_rates(rates, phi)
    n = len(rates)
    pairwise = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            pairwise[i, j] = pairwise[j, i] = pair_correlation(rates[i], rates[j], joint[i, j])
    latent_rates, goal, latent = rates.copy(), phi.copy(), nearest_correlation(pairwise)
    noise = np.random.default_rng(seed).standard_normal((samples, n))
    for _ in range(rounds):
        latent = fit_latent(latent_rates, goal, latent)
        correlated = noise @ np.linalg.cholesky(latent).T
        for _ in range(3):  # the rates, for this latent correlation
            got_rates, got_phi = _rates_and_phi(
                drawable(correlated - stats.norm.ppf(1 - latent_rates))
            )
            latent_rates = np.clip(latent_rates + rates - got_rates, 1e-3, 1 - 1e-3)
        goal = np.clip(goal + phi - got_phi, -0.999, 0.999)
        np.fill_diagonal(goal, 1.0)
    return np.round(latent_rates, 6), np.round(latent, 6)


def read_copula(path: Path = LATENT_FILE) -> tuple[np.ndarray, np.ndarray]:
    """The shipped (latent rates, latent correlation): the 40x40 matrix as :func:`read_matrix`
    reads it, and a last row ``latent_rate``."""
    *matrix, rates = path.read_text(encoding="utf-8").splitlines()
    rows = dict(line.split(",", 1) for line in matrix[1:])
    if not rates.startswith("latent_rate,") or set(rows) != set(CELEBA_ATTRIBUTES):
        raise ValueError(f"{path} is not a copula file: refit it with python -m {__name__}.")
    header = matrix[0].split(",")[1:]
    order = [header.index(name) for name in CELEBA_ATTRIBUTES]
    values = np.array([[float(v) for v in rows[name].split(",")] for name in CELEBA_ATTRIBUTES])
    latent_rates = np.array([float(v) for v in rates.split(",")[1:]])
    return latent_rates[order], values[:, order]


def write_copula(path: Path, latent_rates: np.ndarray, latent: np.ndarray) -> None:
    """Write what :func:`read_copula` reads."""
    lines = ["," + ",".join(CELEBA_ATTRIBUTES)]
    for name, row in zip(CELEBA_ATTRIBUTES, latent, strict=True):
        lines.append(name + "," + ",".join(f"{v:.6f}" for v in row))
    lines.append("latent_rate," + ",".join(f"{v:.6f}" for v in latent_rates))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


@cache
def celeba_copula() -> tuple[np.ndarray, np.ndarray]:
    """CelebA's shipped copula: (thresholds, Cholesky factor of the latent correlation)."""
    latent_rates, latent = read_copula()
    # the standard library's normal quantile: sampling must not import scipy (mtl-synth --help,
    # every training start); the fit below uses scipy
    thresholds = np.array([NormalDist().inv_cdf(float(1 - rate)) for rate in latent_rates])
    return thresholds, np.linalg.cholesky(latent)


def sample_labels(num_images: int, rng: np.random.Generator) -> np.ndarray:
    """(num_images, 40) bool labels with CelebA's rates and phi, drawable (see :func:`drawable`)."""
    thresholds, factor = celeba_copula()
    z = rng.standard_normal((num_images, len(thresholds))) @ factor.T
    return drawable(z - thresholds)


def flip_rates(rates: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-attribute flip probabilities (p01: negative to positive, p10: positive to negative)
    that keep each positive rate and give label accuracy ``accuracy``.

    Keeping the rate: ``p p10 = (1-p) p01``; accuracy: ``p p10 + (1-p) p01 = 1 - accuracy``;
    so ``p10 = (1-accuracy) / (2p)`` and ``p01 = (1-accuracy) / (2(1-p))``. Where that asks
    for more flips of the minority class than it has labels, the accuracy is raised to the
    majority rate (half the minority class's labels flipped, as many of the majority's).
    """
    majority = np.maximum(rates, 1 - rates)
    error = 1 - accuracy
    feasible = error <= 2 * np.minimum(rates, 1 - rates)
    error = np.where(feasible, error, 1 - majority)
    return error / (2 * (1 - rates)), error / (2 * rates)


def main(argv: list[str] | None = None) -> None:
    """Refit the copula from the shipped CelebA statistics and write it."""
    parser = argparse.ArgumentParser(
        prog="python -m mtl_celeba.data.label_model", description=main.__doc__
    )
    parser.add_argument("--out", type=Path, default=LATENT_FILE, help="where to write it")
    args = parser.parse_args(argv)
    write_copula(args.out, *fit_copula(read_positive_rates(), read_matrix(PHI_FILE)))
    print(f"Wrote the copula to {args.out}.")


if __name__ == "__main__":
    main()
