"""A synthetic multispectral tissue image with known parameter maps (thesis sec. 4.2.3, Fig. 4.9).

:func:`tissue_parameter_maps` lays out a piece of tissue on an ``H x W`` pixel grid and gives every pixel the
parameters of :class:`simulators.tissue_spectra.TissueSpectra` (``sO2``, ``v_hb``, ``a_mie``, ``b_mie``, ``g``,
``d`` per layer); :func:`make_tissue_image` simulates the camera's 8 bands for every pixel with the simulator's noise
model and stores image and ground truth as an ``sbi_inn.images`` observation image (HDF5).

The layout (:func:`tissue_layout`), in coordinates relative to the image size so that a 32 x 32 test image and a
1024 x 1024 one show the same tissue at different resolutions:

* **background**: every parameter of every layer is a smooth random field (white noise Gaussian-filtered with a
  width of ``BACKGROUND_SMOOTHING`` times the shorter side, periodic, standardised) around a typical value of mucosal
  tissue (``BACKGROUND``: ``sO2`` 0.72 +- 0.06, ``v_hb`` 0.05 +- 0.015, ``a_mie`` 20 +- 4 cm^-1, ...);
* **a hypoxic region**: one smooth elliptical blob (profile ``exp(-r^4 / 2)``, semi-axes 12-20 % of the shorter side) in
  which the background's ``sO2`` falls towards ``HYPOXIC_SO2`` = 0.25 (weight 1 at its centre);
* **vessels**: ``2`` arteries and ``2`` veins, curvilinear tubes across the image (each the graph of a smooth
  random curve, running left-right or top-bottom) with a Gaussian cross-section: inside them the blood volume rises
  to ``v_hb`` 0.25 (arteries) / 0.22 (veins) and ``sO2`` to 0.97 / 0.60, drawn over the background and the hypoxic
  region (arterial blood stays oxygenated in hypoxic tissue). Radii 1 % (arteries) and 1.4 % (veins) of the shorter
  side, at least one pixel.

Vessels and hypoxia act on every layer alike. All values are clipped to lie strictly inside the simulator's prior
box (a margin of ``1e-3`` of each prior width), so a posterior trained on that prior covers every pixel.

Seeds (the package's seed tree, ``sbi_inn.simulation.SeedTree``): the pixels are simulated in row-major chunks of
``chunk_pixels`` (default ``CHUNK_PIXELS``) pixels on the image's own branch of the ``simulation`` stream of
``seed``: chunk ``k`` is simulated by ``sbi_inn.simulation.Simulation`` with the simulator seed of
``SeedTree(seed).chunk_seeds(k, "simulation", IMAGE_BRANCH)``, i.e.
``simulator.simulate(x_k, generator=torch.Generator().manual_seed(seeds[1]))`` for the chunk's truth rows ``x_k``
(float32). The branch (spawn key ``(IMAGE_BRANCH, k)``, beside the training chunks' ``(k,)``) keeps an image and a
training set of the same ``seed`` from sharing noise. The maps take the place of prior draws and are drawn from the
prior seed of chunk 0 of the branch (``chunk_seeds(0, "simulation", IMAGE_BRANCH)[0]``): its first numpy child
stream lays out vessels and hypoxic region, its second draws the background fields. :func:`make_prior_image`
(pixels drawn independently from the prior, a control for calibration) uses the branch ``PRIOR_IMAGE_BRANCH``
the same way, drawing chunk ``k``'s parameters from its prior seed.

Example:
    >>> maps = tissue_parameter_maps(16, 24, seed=0)
    >>> tuple(maps.shape), maps.dtype
    ((16, 24, 6), torch.float32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_inn.images import write_observation_image
from sbi_inn.priors import support_bounds
from sbi_inn.simulation import SeedTree, Simulation, check_seed
from simulators.tissue_spectra import LAYER_PARAMS, TissueSpectra

# typical value and spread of the smooth background, per layer parameter (LAYER_PARAMS order)
BACKGROUND = {"sO2": (0.72, 0.06), "v_hb": (0.05, 0.015), "a_mie": (20.0, 4.0), "b_mie": (1.3, 0.2),
              "g": (0.875, 0.02), "d": (0.1, 0.03)}
BACKGROUND_SMOOTHING = 0.08   # Gaussian filter width of the background fields, fraction of the shorter side
HYPOXIC_SO2 = 0.25            # sO2 at the centre of the hypoxic region
VESSELS = {"artery": {"count": 2, "sO2": 0.97, "v_hb": 0.25, "radius": 0.010},
           "vein": {"count": 2, "sO2": 0.60, "v_hb": 0.22, "radius": 0.014}}
PRIOR_MARGIN = 1e-3           # values stay this fraction of the prior width inside its bounds
CHUNK_PIXELS = 16384          # pixels per simulated chunk (the seed of chunk k depends on it; recorded in the file)
IMAGE_BRANCH = 2**31          # the image's branch of the simulation stream (spawn keys (IMAGE_BRANCH, k))
PRIOR_IMAGE_BRANCH = 2**31 + 1  # the branch of make_prior_image
MIN_SIDE = 4


@dataclass(frozen=True)
class TissueLayout:
    """Where the structures of the synthetic tissue lie, as weights in ``[0, 1]`` of shape ``(H, W)`` each.

    Attributes:
        artery, vein: the largest vessel weight over the arteries / veins at each pixel (1 on a vessel's centre line).
        hypoxia: the hypoxic blob's weight (1 at its centre).
        description: the JSON-serialisable geometry (blob centre and semi-axes, vessel curves, radii in pixels).
    """

    artery: Tensor
    vein: Tensor
    hypoxia: Tensor
    description: dict

    @property
    def vessel(self) -> Tensor:
        """The largest vessel weight of either kind, ``(H, W)``."""
        return torch.maximum(self.artery, self.vein)


def _check_size(height: int, width: int) -> tuple[int, int]:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"tissue image: {name} must be an integer number of pixels, got {v!r}")
        if v < MIN_SIDE:
            raise ValueError(f"tissue image: {name} must be at least {MIN_SIDE} pixels, got {v}")
    return int(height), int(width)


def _check_simulator(simulator: TissueSpectra | None) -> TissueSpectra:
    if simulator is None:
        return TissueSpectra()
    if not isinstance(simulator, TissueSpectra):
        raise TypeError(f"tissue image: simulator must be a simulators.tissue_spectra.TissueSpectra (its parameters "
                        f"are laid out by name), got {type(simulator).__name__}")
    return simulator


def _map_rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The layout and background generators (module docstring: the prior seed of simulation chunk 0)."""
    base = np.random.SeedSequence(SeedTree(seed).chunk_seeds(0, "simulation", IMAGE_BRANCH)[0])
    layout, background = base.spawn(2)
    return np.random.default_rng(layout), np.random.default_rng(background)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(u, v)`` in units of the shorter side, each ``(H, W)`` (``u`` across, ``v`` down)."""
    side = min(height, width)
    v, u = np.meshgrid((np.arange(height) + 0.5) / side, (np.arange(width) + 0.5) / side, indexing="ij")
    return u, v


def _vessel(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, extent: tuple[float, float],
            radius_px: float, side: int) -> tuple[np.ndarray, dict]:
    """One curvilinear vessel: the graph ``c(t) = c0 + s (t - t_mid) + sum_k a_k sin(2 pi f_k t + phi_k)`` over the
    image's long axis ``t`` (``u`` or ``v``, picked at random), with a Gaussian cross-section of ``radius_px``
    pixels around it; the distance to the curve is ``|n - c(t)| / sqrt(1 + c'(t)^2)`` (to first order)."""
    horizontal = bool(rng.integers(2))
    t, n = (u, v) if horizontal else (v, u)
    t_len, n_len = (extent[0], extent[1]) if horizontal else (extent[1], extent[0])
    c0 = float(rng.uniform(0.15, 0.85)) * n_len
    slope = float(rng.uniform(-0.3, 0.3))
    amps = rng.uniform(0.02, 0.06, size=2) * n_len
    freqs = rng.uniform(0.4, 1.5, size=2) / t_len
    phases = rng.uniform(0, 2 * math.pi, size=2)
    arg = 2 * math.pi * freqs[:, None, None] * t + phases[:, None, None]
    curve = c0 + slope * (t - t_len / 2) + (amps[:, None, None] * np.sin(arg)).sum(0)
    deriv = slope + (amps[:, None, None] * 2 * math.pi * freqs[:, None, None] * np.cos(arg)).sum(0)
    dist_px = np.abs(n - curve) / np.sqrt(1 + deriv**2) * side
    weight = np.exp(-0.5 * (dist_px / radius_px) ** 2)
    desc = {"along": "width" if horizontal else "height", "offset": c0, "slope": slope, "amplitudes": amps.tolist(),
            "frequencies": freqs.tolist(), "phases": phases.tolist(), "radius_px": radius_px,
            "units": "coordinates in units of the shorter image side, curve offset across the vessel's axis"}
    return weight, desc


def tissue_layout(height: int = 512, width: int = 512, *, seed: int = 0) -> TissueLayout:
    """Vessels and hypoxic region of the synthetic tissue (module docstring), as ``(H, W)`` weight maps.

    Args:
        height, width: image size in pixels (at least ``MIN_SIDE`` each).
        seed: the image's seed (the same as :func:`tissue_parameter_maps` and :func:`make_tissue_image` take).

    Returns:
        a :class:`TissueLayout` (float32 weights, the geometry as JSON).
    """
    height, width = _check_size(height, width)
    seed = check_seed(seed)
    rng, _ = _map_rngs(seed)
    side = min(height, width)
    u, v = _grid(height, width)
    extent = (width / side, height / side)
    # hypoxic blob: centre away from the border, semi-axes 12-20 % of the shorter side, random orientation
    centre = (float(rng.uniform(0.3, 0.7)) * extent[0], float(rng.uniform(0.3, 0.7)) * extent[1])
    axes = rng.uniform(0.12, 0.20, size=2)
    angle = float(rng.uniform(0, math.pi))
    du, dv = u - centre[0], v - centre[1]
    a = (du * math.cos(angle) + dv * math.sin(angle)) / axes[0]
    b = (-du * math.sin(angle) + dv * math.cos(angle)) / axes[1]
    hypoxia = np.exp(-0.5 * (a**2 + b**2) ** 2)
    desc = {"hypoxia": {"centre": list(centre), "semi_axes": axes.tolist(), "angle": angle, "sO2": HYPOXIC_SO2,
                        "profile": "exp(-r^4 / 2), r the elliptical radius in semi-axes"},
            "units": "coordinates in units of the shorter image side (u across, v down)"}
    weights = {}
    for kind, spec in VESSELS.items():
        radius_px = max(spec["radius"] * side, 1.0)
        w, descs = np.zeros_like(u), []
        for _ in range(spec["count"]):
            wk, dk = _vessel(rng, u, v, extent, radius_px, side)
            w = np.maximum(w, wk)
            descs.append(dk)
        weights[kind] = w
        desc[kind] = {"sO2": spec["sO2"], "v_hb": spec["v_hb"], "vessels": descs}
    as_t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    return TissueLayout(as_t(weights["artery"]), as_t(weights["vein"]), as_t(hypoxia), desc)


def _smooth_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Standardised, periodic Gaussian-filtered white noise of shape ``(H, W)`` (filter width
    ``BACKGROUND_SMOOTHING`` times the shorter side, applied in Fourier space)."""
    sigma = BACKGROUND_SMOOTHING * min(height, width)
    noise = rng.standard_normal((height, width))
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    transfer = np.exp(-2 * (math.pi * sigma) ** 2 * (fy**2 + fx**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(height, width))
    field = field - field.mean()
    std = field.std()
    return field / std if std > 0 else field


def tissue_parameter_maps(height: int = 512, width: int = 512, *, seed: int = 0,
                          simulator: TissueSpectra | None = None) -> Tensor:
    """Spatially structured parameter maps of the synthetic tissue (module docstring), inside the prior box.

    Args:
        height, width: image size in pixels (at least ``MIN_SIDE`` each).
        seed: seeds layout and background (module docstring).
        simulator: the :class:`TissueSpectra` whose parameters are laid out (``None``: ``TissueSpectra()``, one
            layer); its number of layers sets ``D = 6 * num_layers``.

    Returns:
        float32 maps of shape ``(H, W, D)``, parameters in ``simulator.param_names`` order, every value strictly
        inside the prior's bounds.
    """
    height, width = _check_size(height, width)
    seed = check_seed(seed)
    sim = _check_simulator(simulator)
    layout = tissue_layout(height, width, seed=seed)
    _, rng = _map_rngs(seed)
    lo, hi = (b.double().numpy() for b in support_bounds(sim.prior))
    hypoxia, artery, vein = (t.double().numpy() for t in (layout.hypoxia, layout.artery, layout.vein))
    maps = np.empty((height, width, sim.param_dim))
    for j in range(sim.param_dim):
        name = LAYER_PARAMS[j % len(LAYER_PARAMS)][0]
        centre, spread = BACKGROUND[name]
        value = centre + spread * _smooth_field(rng, height, width)
        if name == "sO2":
            value = value * (1 - hypoxia) + HYPOXIC_SO2 * hypoxia
        if name in ("sO2", "v_hb"):
            for kind, w in (("artery", artery), ("vein", vein)):
                value = value * (1 - w) + VESSELS[kind][name] * w
        margin = PRIOR_MARGIN * (hi[j] - lo[j])
        maps[..., j] = np.clip(value, lo[j] + margin, hi[j] - margin)
    return torch.as_tensor(maps, dtype=torch.float32)


def _check_chunk(chunk_pixels) -> int:
    if isinstance(chunk_pixels, bool) or not isinstance(chunk_pixels, (int, np.integer)) or chunk_pixels < 1:
        raise ValueError(f"tissue image: chunk_pixels must be a positive integer, got {chunk_pixels!r}")
    return int(chunk_pixels)


def simulate_pixels(simulator: TissueSpectra, truth: Tensor, *, seed: int = 0, chunk_pixels: int = CHUNK_PIXELS,
                    show_progress: bool = True) -> Tensor:
    """Camera intensities for every pixel of ``truth`` ``(H, W, D)``, shape ``(H, W, M)`` float32, simulated in
    row-major chunks of ``chunk_pixels`` seeded as in the module docstring."""
    chunk_pixels = _check_chunk(chunk_pixels)
    if truth.ndim != 3 or truth.shape[-1] != simulator.param_dim:
        raise ValueError(f"tissue image: truth must have shape (H, W, {simulator.param_dim}), got "
                         f"{tuple(truth.shape)}")
    height, width, _ = truth.shape
    x = truth.reshape(-1, simulator.param_dim).to(torch.float32)
    sim, tree = Simulation(simulator), SeedTree(seed)
    out = torch.empty(x.shape[0], simulator.obs_dim, dtype=torch.float32)
    num_chunks = -(-x.shape[0] // chunk_pixels)
    for k in tqdm(range(num_chunks), disable=not show_progress, desc="simulating pixels", unit="chunk"):
        rows = slice(k * chunk_pixels, min((k + 1) * chunk_pixels, x.shape[0]))
        chunk = sim.run(x[rows], tree.chunk_seeds(k, "simulation", IMAGE_BRANCH)[1])
        if chunk.num_invalid:
            raise RuntimeError(f"tissue image: the simulator returned NaN or inf for {chunk.num_invalid} pixels of "
                               f"chunk {k}, e.g. for x = {chunk.example()}")
        out[rows] = chunk.y
    return out.reshape(height, width, simulator.obs_dim)


def make_tissue_image(path: str | Path, height: int = 512, width: int = 512, *, seed: int = 0,
                      simulator: TissueSpectra | None = None, overwrite: bool = False,
                      show_progress: bool = True, chunk_pixels: int = CHUNK_PIXELS) -> Path:
    """Simulate the synthetic tissue image and write it, with its ground truth, as an observation image.

    Args:
        path: output HDF5 file (``sbi_inn.images`` format); an existing file is refused unless ``overwrite``.
        height, width: image size in pixels.
        seed: seeds maps and pixel noise (module docstring).
        simulator: a :class:`TissueSpectra` (``None``: ``TissueSpectra()``, one layer, 5 % noise).
        overwrite: replace an existing file.
        show_progress: a tqdm bar over the simulated chunks.
        chunk_pixels: pixels per simulated chunk (part of the seed contract; recorded).

    Returns:
        the path written. The file holds ``y`` ``(H, W, M)`` float32, ``truth`` ``(H, W, D)``, the image format's
        own attributes (names, ``sbi_inn_version``, ...) and the attrs ``simulator``, ``simulator_config``, ``seed``,
        ``chunk_pixels``, ``generator`` and the ``layout`` geometry (:func:`tissue_layout`).
    """
    path = Path(path)
    if path.exists() and not overwrite:  # checked before any work; the writer checks again
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    sim, chunk_pixels = _check_simulator(simulator), _check_chunk(chunk_pixels)
    truth = tissue_parameter_maps(height, width, seed=seed, simulator=sim)
    y = simulate_pixels(sim, truth, seed=seed, chunk_pixels=chunk_pixels, show_progress=show_progress)
    attrs = {"simulator": sim.name, "simulator_config": sim.config(), "seed": int(seed),
             "chunk_pixels": int(chunk_pixels), "generator": "simulators.tissue_image.make_tissue_image",
             "layout": tissue_layout(height, width, seed=seed).description}
    write_observation_image(path, y.numpy(), truth=truth.numpy(), param_names=sim.param_names,
                            obs_names=sim.obs_names, attrs=attrs, overwrite=overwrite)
    return path


def make_prior_image(path: str | Path, height: int = 64, width: int = 64, *, seed: int = 0,
                     simulator: TissueSpectra | None = None, overwrite: bool = False, show_progress: bool = True,
                     chunk_pixels: int = CHUNK_PIXELS) -> Path:
    """An image whose pixels have parameters drawn independently from the simulator's prior: a control, on which a
    calibrated posterior's central 68 % intervals hold the truth for 68 % of the pixels (on the structured image
    they need not: calibration holds on average over the prior, not for every set of parameters).

    Chunk ``k`` of ``chunk_pixels`` row-major pixels is ``Simulation(simulator).chunk(seeds, n)`` with ``seeds =
    SeedTree(seed).chunk_seeds(k, "simulation", PRIOR_IMAGE_BRANCH)``: its prior seed draws the parameters, its
    simulator seed the noise. Written like :func:`make_tissue_image` (attrs without ``layout``, with ``"prior":
    true``).

    Returns:
        the path written.
    """
    height, width = _check_size(height, width)
    seed, chunk_pixels = check_seed(seed), _check_chunk(chunk_pixels)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    sim_ = _check_simulator(simulator)
    sim, tree, n = Simulation(sim_), SeedTree(seed), height * width
    xs, ys = [], []
    for k in tqdm(range(-(-n // chunk_pixels)), disable=not show_progress, desc="simulating pixels", unit="chunk"):
        size = min(chunk_pixels, n - k * chunk_pixels)
        chunk = sim.chunk(tree.chunk_seeds(k, "simulation", PRIOR_IMAGE_BRANCH), size)
        if chunk.num_invalid:
            raise RuntimeError(f"tissue image: the simulator returned NaN or inf for {chunk.num_invalid} pixels of "
                               f"chunk {k}, e.g. for x = {chunk.example()}")
        xs.append(chunk.x)
        ys.append(chunk.y)
    attrs = {"simulator": sim_.name, "simulator_config": sim_.config(), "seed": seed, "chunk_pixels": chunk_pixels,
             "generator": "simulators.tissue_image.make_prior_image", "prior": True}
    write_observation_image(path, torch.cat(ys).reshape(height, width, -1).numpy(),
                            truth=torch.cat(xs).reshape(height, width, -1).numpy(), param_names=sim_.param_names,
                            obs_names=sim_.obs_names, attrs=attrs, overwrite=overwrite)
    return path
