"""Multispectral reflectance of layered tissue from physiological parameters (thesis sec. 4.2.3; Wirkert et al. 2016).

Each tissue layer ``i`` has six parameters (``param_names`` in this order, suffixed ``_i`` when ``num_layers > 1``):

=========  ===========================================  =======  ===============
name       meaning                                      unit     prior (uniform)
=========  ===========================================  =======  ===============
``sO2``    oxygen saturation of the blood                --       [0, 1]
``v_hb``   blood volume fraction                         --       [0, 0.3]
``a_mie``  reduced scattering coefficient at 500 nm      cm^-1    [5, 50]
``b_mie``  Mie scattering power                          --       [0.3, 3]
``g``      scattering anisotropy                         --       [0.8, 0.95]
``d``      layer thickness                               cm       [0.002, 0.2]
=========  ===========================================  =======  ===============

The ranges follow the layered colon-tissue model of Wirkert et al. (2016) (20 um - 2 mm thick layers, up to 30 %
blood); they are plausible for mucosal tissue, not fitted to any data set.

Optical properties (per layer, per wavelength ``lam``):

* absorption ``mu_a = v_hb * ln(10) * c_Hb / M_Hb * (sO2 eps_HbO2 + (1 - sO2) eps_Hb)`` with whole-blood haemoglobin
  ``c_Hb = 150 g/L`` and ``M_Hb = 64 500 g/mol`` (Prahl's conversion), and the molar extinction coefficients
  ``eps`` tabulated by S. Prahl (1999, compiled from W. B. Gratzer and N. Kollias), shipped as
  ``simulators/data/hemoglobin_extinction.csv`` (10 nm rows, 450-800 nm, linearly interpolated). A floor of
  ``1e-4 cm^-1`` stands in for water and bloodless tissue, which absorb little in this range.
* reduced scattering ``mu_s' = a_mie (lam / 500 nm)^(-b_mie)``; scattering ``mu_s = mu_s' / (1 - g)``.

Photon transport (``method="diffusion"``): the steady-state diffusion approximation in one dimension (broad,
laterally uniform illumination, which gives the same total diffuse reflectance as the radially integrated response
to a pencil beam), solved exactly for a stack of ``num_layers`` homogeneous layers:

* the collimated light is treated in the delta-Eddington approximation: its unscattered part decays with
  ``mu_t* = mu_a + mu_s (1 - g^2) = mu_a + mu_s' (1 + g)`` and feeds an isotropic diffuse source
  ``q(z) = mu_s (1 - g^2) exp(-tau*(z))``. This is the (weak) way ``g`` enters: through the depth at which the
  light becomes diffuse. The first-order (dipole) source term is neglected.
* the diffuse fluence obeys ``D phi'' = mu_a phi - q`` with ``D = 1 / (3 (mu_a + mu_s'))`` in each layer,
  continuity of fluence and flux at internal interfaces (index matched), and a partial-current (Robin) boundary
  ``phi = 2 A J_out`` at the tissue-air surface with ``A = (1 + r_id) / (1 - r_id)`` from the internal diffuse
  reflectance ``r_id`` of refractive index ``n`` (Groenhuis et al. 1983; ``A = 3.25`` at ``n = 1.4``).
* below the stack (``base="semi_infinite"``, default) the deepest layer continues to infinite depth, so the
  thickness of the deepest layer does not matter (its ``d`` is then a nuisance parameter with no effect, the
  extreme case of the thesis finding that ``d`` is not recoverable); ``base="ambient"`` ends the stack on a
  non-scattering, index-matched medium that absorbs all light leaving through the bottom (as in MCML set-ups).
* the reflected flux is computed by transferring flux-to-fluence admittances ``Y = J / phi`` through the layers
  (``Y' = D mu (D mu tanh(mu t) + Y) / (D mu + Y tanh(mu t))``, ``mu = sqrt(mu_a / D)``), which is stable for any
  optical thickness, and integrating the exponential source analytically over each layer (the surface response to
  a plane source at depth ``s`` solves the homogeneous diffusion equation in ``s``, so it is exact from its values
  at the two interfaces).

For one semi-infinite layer this reduces to ``R = a* mu_t* / (mu_t* + mu) / (1 + 2 A D mu)`` with
``a* = mu_s (1 - g^2) / mu_t*``, within 20 % of Farrell et al. (1992)'s total diffuse reflectance for transport
albedos 0.9-0.999. Limits: diffusion theory assumes ``mu_s' >> mu_a`` (transport albedo ``>~ 0.9``); it is
qualitative where blood absorbs strongly (``v_hb`` near 0.3 at 450-580 nm, albedo down to ~0.3) and for layers
thinner than a transport mean free path ``1 / (mu_a + mu_s')`` (tens of um to a few hundred um here). It ignores
the specular reflex (assumed removed, e.g. by cross-polarisation) and lateral structure.

Photon transport (``method="monte_carlo"``): the same optical properties (``mu_s = mu_s' / (1 - g)``, the same
absorption floor), traced by the photon Monte Carlo of :mod:`simulators.photon_mc` (MCML rules: Henyey-Greenstein
scattering with the full anisotropy ``g``, implicit absorption, Fresnel reflection and refraction at the tissue-air
surface of index ``refractive_index``, the layers index-matched to each other, Russian roulette), one run per row
and grid wavelength. ``base="semi_infinite"`` makes the deepest layer semi-infinite; ``base="ambient"`` ends the
stack on an index-matched medium that keeps all light leaving through the bottom. The reflectance is the diffuse
reflectance (specular reflex excluded, as above). It is exact transport theory where diffusion is not (low albedo,
thin layers; diffusion overestimates the reflectance there, and by ~5-10 % even at transport albedo 0.99 with
``g = 0.9``, see ``tests/simulators/test_photon_mc.py``), but stochastic:

* ``photons`` (default ``DEFAULT_PHOTONS = 1000``) packets are traced at the brightest wavelength of each spectrum;
  a dimmer wavelength gets ``photons * min(16, R_max / R)`` of them (``R`` the diffusion estimate), which evens
  the relative error across the spectrum at little cost, since strongly absorbed photons take few steps. The Monte
  Carlo noise is part of the simulation: the measured relative error of a normalised band (the camera averages
  ~10 grid wavelengths) is 0.8-3.7 % on average over prior draws, at most ~5.6 %, the most in the 470/480 nm and
  560 nm bands (``benchmarks/results/photon_mc.json``), below the default camera noise of 5 % on average; it
  falls as ``1 / sqrt(photons)``. ``noise=0`` therefore does not make this mode deterministic. All of it is drawn
  from the ``generator`` given to :meth:`simulate` (or to :meth:`reflectance` and :meth:`band_intensities`): a
  seed reproduces a simulation exactly (for the same batch of rows).
* a photon is traced for at most ``MC_MAX_STEPS = 20 000`` steps; the weight still travelling then is lost, so the
  reflectance is biased low by that much: at most 0.3 % of the reflectance over 16 prior draws (measured), more
  (a few percent) in nearly bloodless tissue (``v_hb`` -> 0) at red wavelengths, where the random walks in the
  nearly non-absorbing tissue are longest.
* it is slow: the cost is the number of scattering events, ~40 million per spectrum over the prior (190 per
  photon, 2e5 photons), ~5 s per spectrum on one loaded CPU thread (0.2 spectra/s, 8e6 photon steps/s measured
  by ``benchmarks/bench_photon_mc.py``); the photons of all rows of a call are traced together (streamed, at most
  2^20 at once), so large batches amortise the long tail of slow random walks, and on a GPU (inputs and generator
  there) they run in parallel.
* :meth:`log_likelihood` refuses (``NotImplementedError``): the distribution of the Monte Carlo noise has no closed
  form; use the diffusion mode for an exact likelihood.

In the Monte Carlo mode ``g`` acts through the whole phase function, so its (small) effect on the bands differs
from the diffusion mode's; the identifiability notes below are for the diffusion mode.

Camera: the reflectance on a grid of ``wavelength_step`` (5 nm) is integrated over ``len(band_centers)`` bands
(default 8) with Gaussian filter responses of the given centres and FWHM, weighted by the illumination spectrum
(flat by default) and divided by the response to a white reference (flat-field calibration). The default centres
(470, 480, 511, 560, 580, 600, 660, 700 nm; FWHM 20 nm) are a plausible imitation of the Pixelteq-style filter set
of the thesis' camera (Wirkert et al.), not the exact filters. Because absolute intensity depends on distance,
angle and illumination power, the band values are normalised to sum to one (L1 normalisation), so only relative
intensities (``obs_units`` ``"relative"``) remain. Noise (``noise = sigma > 0``) is multiplicative log-normal on
the normalised intensities, ``y_b = ybar_b(x) exp(sigma eps_b)``, ``eps_b ~ N(0, 1)``: about ``100 sigma`` %
relative error per band (shot-like, always positive), with the exact likelihood :meth:`log_likelihood`. With noise
the outputs no longer sum exactly to one.

Identifiability (what the 8 normalised bands can tell). The thesis found ``sO2``, ``v_hb`` and ``a_mie``
recoverable, ``g`` and ``d`` not, and ``v_hb`` strongly correlated with ``a_mie``. In this model, at a typical point
(``test_identifiability_sensitivities`` checks it with the Jacobian of ``log y`` scaled by the prior widths):

* ``sO2`` is well determined: the haemoglobin spectra differ most between 540 and 600 nm. Higher ``sO2`` raises the
  600/580 nm and 560/580 nm intensity ratios (HbO2 absorbs more at 576-580 nm, much less at 600 nm).
* ``v_hb`` and ``a_mie`` are correlated, in the extreme: the reflectance of a homogeneous semi-infinite medium is
  scale free (it depends only on ``mu_a / mu_s'``, in exact transport theory as here), so one layer on the default
  base sees ``v_hb`` and ``a_mie`` only through ``v_hb / a_mie``; more blood absorbs more light, which more
  scattering sends back. Their posterior is a ray through the origin cut by the prior box. Layer thicknesses (more
  layers, or ``base="ambient"``) break the exact degeneracy. ``b_mie`` acts on the spectral slope.
* ``g`` changes the normalised intensities by ~3 % (at most 5 %) over its whole prior range, within the default noise:
  not recoverable. In diffusion theory light transport depends on ``mu_s'`` alone; ``g`` only shifts the depth
  at which the collimated light turns diffuse.
* ``d`` of the deepest layer has no effect over the default semi-infinite base (the extreme form of the thesis
  finding); the thickness of an upper layer matters while that layer is thin compared to the penetration depth
  (~0.1-3 mm), and so does ``d`` with ``base="ambient"``.

References:
    thesis sec. 4.2.3 (parameters ``sO2``, ``v_hb``, ``a_mie``, ``g``, ``d``; only the first three
    recoverable). S. Wirkert et al., "Robust near real-time estimation of physiological parameters from megapixel
    multispectral images with inverse Monte Carlo and random forest regression", IJCARS 11 (2016). S. Prahl,
    "Optical absorption of hemoglobin" (OMLC, 1999). T. J. Farrell, M. S. Patterson, B. Wilson, Med. Phys. 19
    (1992) 879. J. H. Joseph, W. J. Wiscombe, J. A. Weinman, J. Atmos. Sci. 33 (1976) 2452 (delta-Eddington).

Example:
    >>> from simulators import get_simulator
    >>> sim = get_simulator("tissue_spectra", noise=0.0)
    >>> sim.param_names
    ['sO2', 'v_hb', 'a_mie', 'b_mie', 'g', 'd']
    >>> y = sim.simulate(sim.prior.mean[None])
    >>> y.shape, round(float(y.sum()), 4)
    (torch.Size([1, 8]), 1.0)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from importlib import resources

import torch
from torch import Tensor

from sbi_inn.priors import BoxUniform
from simulators.base import Simulator
from simulators.photon_mc import photon_mc

# per-layer parameters: name, unit, prior low, prior high
LAYER_PARAMS = (
    ("sO2", "", 0.0, 1.0),
    ("v_hb", "", 0.0, 0.3),
    ("a_mie", "cm^-1", 5.0, 50.0),
    ("b_mie", "", 0.3, 3.0),
    ("g", "", 0.8, 0.95),
    ("d", "cm", 0.002, 0.2),
)
PHYSICAL_DOMAIN = ("0 <= sO2 <= 1", "0 <= v_hb <= 1", "a_mie > 0", "any b_mie", "0 <= g < 1", "d > 0")
DEFAULT_BAND_CENTERS = (470.0, 480.0, 511.0, 560.0, 580.0, 600.0, 660.0, 700.0)
DEFAULT_BAND_FWHM = 20.0
C_HB = 150.0  # g/L haemoglobin in whole blood
M_HB = 64500.0  # g/mol, tetramer
MU_A_FLOOR = 1e-4  # cm^-1, stands in for water / bloodless tissue
CHUNK_ELEMENTS = 32768  # (layers x rows x wavelengths) per chunk: cache-sized, below torch's intra-op grain size
METHODS = ("diffusion", "monte_carlo")
DEFAULT_PHOTONS = 1000  # photon packets per wavelength in method="monte_carlo" (at the brightest wavelength)
MC_BOOST = 16  # dimmer wavelengths get up to this many times more photons (see the module docstring)
MC_MAX_STEPS = 20_000  # steps per photon before it is counted as unfinished (bias bound reported, see module)
BASES = ("semi_infinite", "ambient")


def load_hemoglobin_table() -> tuple[Tensor, Tensor, Tensor]:
    """Prahl's haemoglobin table as float64 tensors ``(wavelength_nm, eps_HbO2, eps_Hb)`` in nm and cm^-1/M."""
    text = resources.files("simulators").joinpath("data/hemoglobin_extinction.csv").read_text()
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.reader(rows[1:])
    table = torch.tensor([[float(v) for v in row] for row in reader], dtype=torch.float64)
    return table[:, 0].contiguous(), table[:, 1].contiguous(), table[:, 2].contiguous()


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x`` (``xp`` increasing, ``x`` inside its range)."""
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    t = (x - xp[i - 1]) / (xp[i] - xp[i - 1])
    return fp[i - 1] + t * (fp[i] - fp[i - 1])


def _expint(x: Tensor, d: Tensor) -> Tensor:
    """``int_0^d exp(-x s) ds = (1 - exp(-x d)) / x`` for ``x >= 0`` (limit ``d`` at ``x = 0``)."""
    x = x.clamp_min(1e-12)
    return -torch.expm1(-x * d) / x


def _transfer(y: Tensor, dmu: Tensor, th: Tensor) -> Tensor:
    """Admittance ``J / phi`` seen through a homogeneous slab (``th = tanh(mu t)``) that ends on admittance ``y``."""
    return dmu * (dmu * th + y) / (dmu + y * th)


def refractive_index_factor(n: float) -> float:
    """``A = (1 + r_id) / (1 - r_id)`` of the partial-current boundary (Groenhuis et al. 1983 fit of ``r_id``)."""
    r_id = -1.440 / n**2 + 0.710 / n + 0.668 + 0.0636 * n
    return (1 + r_id) / (1 - r_id)


def diffuse_reflectance(mu_a: Tensor, mu_sp: Tensor, g: Tensor, d: Tensor, *, A: float,
                        semi_infinite_base: bool = True) -> Tensor:
    """Total diffuse reflectance of a layer stack in the delta-Eddington diffusion approximation.

    Args:
        mu_a, mu_sp, g: absorption and reduced scattering (cm^-1) and anisotropy, shape ``(N, ...)`` for ``N``
            layers from the surface down (any broadcastable trailing shape, e.g. ``(n, L)``).
        d: thicknesses (cm), shape ``(N, ...)``; the deepest one is ignored with ``semi_infinite_base``.
        A: boundary factor of the tissue-air surface (:func:`refractive_index_factor`).
        semi_infinite_base: the deepest layer continues to infinite depth; otherwise the stack ends on an
            absorbing, index-matched medium.

    Returns:
        reflectance in ``[0, 1]``, the broadcast trailing shape.
    """
    mu_a = mu_a.clamp_min(MU_A_FLOOR)
    mu_tp = mu_a + mu_sp                                # transport coefficient, D = 1 / (3 mu_tp)
    mu = torch.sqrt(3 * mu_a * mu_tp)                   # effective attenuation
    dmu = torch.sqrt(mu_a / (3 * mu_tp))                # D * mu
    mu_ss = mu_sp * (1 + g)                             # delta-Eddington scattering mu_s (1 - g^2)
    c = mu_a + mu_ss                                    # attenuation of the collimated beam
    num = mu_a.shape[0]
    finite = num - 1 if semi_infinite_base else num     # layers of finite thickness
    # per finite layer: den = 1 - exp(-2 mu d), em = exp(-mu d), tanh(mu d) and sech(mu d)
    den = [-torch.expm1(-2 * mu[i] * d[i]) for i in range(finite)]
    em = [torch.exp(-mu[i] * d[i]) for i in range(finite)]
    th = [den[i] / (2 - den[i]) for i in range(finite)]
    sech = [2 * em[i] / (2 - den[i]) for i in range(finite)]
    # admittance J_down / phi looking down from each interface (0: surface, num: bottom of the stack)
    y_down = [None] * (num + 1)
    if semi_infinite_base:
        y_down[num - 1] = dmu[num - 1]
    else:
        y_down[num] = torch.full_like(dmu[0], 0.5)      # index-matched absorbing medium below: phi = 2 J_out
    for i in reversed(range(finite)):
        y_down[i] = _transfer(y_down[i + 1], dmu[i], th[i])
    # admittance J_up / phi looking up, and the fraction of upward flux at each interface escaping at the surface
    y_up, escape = [torch.full_like(dmu[0], 0.5 / A)], [torch.ones_like(dmu[0])]
    for i in range(finite):
        escape.append(escape[i] * y_up[i] * sech[i] / (dmu[i] * th[i] + y_up[i]))
        y_up.append(_transfer(y_up[i], dmu[i], th[i]))
    # surface response to a unit plane source at each interface: phi = S / (Y_up + Y_down), J_up = Y_up phi
    resp = [y_up[k] / (y_up[k] + y_down[k]) * escape[k] for k in range(len(y_up))]
    refl = torch.zeros_like(dmu[0])
    att = torch.ones_like(dmu[0])                       # collimated light left at the layer's top, exp(-tau)
    for k in range(finite):
        # inside the layer the response is [R0 sinh(mu (d - s)) + R1 sinh(mu s)] / sinh(mu d); integrate it
        # against the source exp(-c s) analytically: with E = int exp(-(c + mu) s) ds and
        # F = int exp(-c s - mu (d - s)) ds over [0, d], i0 = (E - em F) / den and i1 = (F - em E) / den
        e_int = _expint(c[k] + mu[k], d[k])
        f_int = torch.exp(-torch.minimum(c[k], mu[k]) * d[k]) * _expint((c[k] - mu[k]).abs(), d[k])
        i0 = (e_int - em[k] * f_int) / den[k]
        i1 = (f_int - em[k] * e_int) / den[k]
        refl = refl + att * mu_ss[k] * (resp[k] * i0 + resp[k + 1] * i1)
        att = att * torch.exp(-c[k] * d[k])
    if semi_infinite_base:                              # response R0 exp(-mu s) below the last interface
        refl = refl + att * mu_ss[num - 1] * resp[num - 1] / (c[num - 1] + mu[num - 1])
    return refl


class TissueSpectra(Simulator):
    """Relative 8-band camera intensities of layered tissue; see the module docstring for the model.

    Args:
        num_layers: number of tissue layers (1-3), each with the six parameters of ``LAYER_PARAMS``.
        band_centers: filter centre wavelengths in nm (450-800 nm), at least two.
        band_fwhm: filter full width at half maximum in nm, one number or one per band.
        noise: relative (log-normal) noise level ``sigma`` on the normalised intensities; ``0`` is noise free.
        method: photon transport model, ``"diffusion"`` (deterministic, fast) or ``"monte_carlo"`` (photon Monte
            Carlo, :mod:`simulators.photon_mc`; its noise is part of the simulation, see the module docstring).
        photons: photon packets per wavelength for ``method="monte_carlo"`` (default ``DEFAULT_PHOTONS``), at the
            brightest wavelength of each spectrum (dimmer ones get more, see the module docstring); must not be
            given with ``"diffusion"``.
        base: ``"semi_infinite"`` (deepest layer continues downwards) or ``"ambient"`` (absorbing medium below).
        refractive_index: tissue refractive index for the surface boundary condition.
        illumination: ``None`` for a flat spectrum or ``[[wavelength_nm, power], ...]`` (linearly interpolated,
            held constant outside the given range).
        wavelength_step: spacing in nm of the grid the spectrum is computed on.
    """

    name = "tissue_spectra"

    def __init__(self, num_layers: int = 1, band_centers: Sequence[float] = DEFAULT_BAND_CENTERS,
                 band_fwhm: float | Sequence[float] = DEFAULT_BAND_FWHM, noise: float = 0.05,
                 method: str = "diffusion", base: str = "semi_infinite", refractive_index: float = 1.4,
                 illumination: Sequence[Sequence[float]] | None = None, wavelength_step: float = 5.0,
                 photons: int | None = None):
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= 3:
            raise ValueError(f"tissue_spectra: num_layers must be 1, 2 or 3, got {num_layers!r}")
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ValueError(f"tissue_spectra: noise must be a finite number >= 0, got {noise!r}")
        if method not in METHODS:
            raise ValueError(f"tissue_spectra: unknown method {method!r}; available: {', '.join(METHODS)}")
        if photons is not None and method != "monte_carlo":
            raise ValueError(f"tissue_spectra: photons applies to method='monte_carlo' only, got method={method!r}")
        if photons is None:
            photons = DEFAULT_PHOTONS
        if isinstance(photons, bool) or not isinstance(photons, int) or not 2 <= photons <= 10**8:
            raise ValueError(f"tissue_spectra: photons must be an integer in [2, 1e8], got {photons!r}")
        if base not in BASES:
            raise ValueError(f"tissue_spectra: unknown base {base!r}; available: {', '.join(BASES)}")
        if not (math.isfinite(refractive_index) and 1.0 <= refractive_index <= 2.0):
            raise ValueError(f"tissue_spectra: refractive_index must be in [1, 2], got {refractive_index!r}")
        if not (math.isfinite(wavelength_step) and 0.1 <= wavelength_step <= 10.0):
            raise ValueError(f"tissue_spectra: wavelength_step must be in [0.1, 10] nm, got {wavelength_step!r}")
        lam_tab, eps_o, eps_d = load_hemoglobin_table()
        lo_tab, hi_tab = float(lam_tab[0]), float(lam_tab[-1])
        centers = [float(c) for c in band_centers]
        if len(centers) < 2:
            raise ValueError(f"tissue_spectra: need at least 2 bands (intensities are normalised over bands), "
                             f"got {len(centers)}")
        if any(not (lo_tab <= c <= hi_tab) for c in centers):
            raise ValueError(f"tissue_spectra: band_centers must lie in the haemoglobin table's range "
                             f"[{lo_tab:g}, {hi_tab:g}] nm, got {centers}")
        fwhm = [float(band_fwhm)] * len(centers) if isinstance(band_fwhm, (int, float)) else \
            [float(w) for w in band_fwhm]
        if len(fwhm) != len(centers):
            raise ValueError(f"tissue_spectra: band_fwhm has {len(fwhm)} widths for {len(centers)} band centres")
        if any(not (0 < w <= 200 and math.isfinite(w)) for w in fwhm):
            raise ValueError(f"tissue_spectra: band_fwhm must be in (0, 200] nm, got {fwhm}")
        self.num_layers, self.noise, self.method, self.base = num_layers, float(noise), method, base
        self.photons = int(photons)
        self.refractive_index, self.wavelength_step = float(refractive_index), float(wavelength_step)
        self.band_centers, self.band_fwhm = centers, fwhm
        self.illumination = None if illumination is None else [[float(w), float(p)] for w, p in illumination]
        self.A = refractive_index_factor(self.refractive_index)

        # wavelength grid covering +-3 sigma of every filter, clipped to the table
        sig = torch.tensor(fwhm, dtype=torch.float64) / (2 * math.sqrt(2 * math.log(2)))
        cen = torch.tensor(centers, dtype=torch.float64)
        lo = max(lo_tab, float((cen - 3 * sig).min()))
        hi = min(hi_tab, float((cen + 3 * sig).max()))
        steps = max(int(math.ceil((hi - lo) / self.wavelength_step)), 1)
        self.wavelengths = torch.linspace(lo, hi, steps + 1, dtype=torch.float64)  # (L,), nm
        self._lam_tab, self._eps_tab = lam_tab, torch.stack([eps_o, eps_d])
        weights = torch.exp(-0.5 * ((self.wavelengths[:, None] - cen) / sig) ** 2)  # (L, B)
        weights = weights * self._illumination(self.wavelengths)[:, None]
        if not (weights.sum(0) > 0).all():
            raise ValueError("tissue_spectra: the illumination has no power inside some band")
        self._band_weights = weights / weights.sum(0)  # white-reference calibrated: a flat R gives R in every band
        self._eps_grid = self._extinction(self.wavelengths)  # (2, L)

        suffixes = [""] if num_layers == 1 else [f"_{i + 1}" for i in range(num_layers)]
        self.param_names = [f"{p[0]}{s}" for s in suffixes for p in LAYER_PARAMS]
        self.param_units = [p[1] for _ in suffixes for p in LAYER_PARAMS]
        self.obs_names = [f"band_{c:g}nm" for c in centers]
        self.obs_units = ["relative"] * len(centers)
        self.prior = BoxUniform([p[2] for p in LAYER_PARAMS] * num_layers, [p[3] for p in LAYER_PARAMS] * num_layers)

    def config(self) -> dict:
        cfg = {"num_layers": self.num_layers, "band_centers": list(self.band_centers),
               "band_fwhm": list(self.band_fwhm), "noise": self.noise, "method": self.method, "base": self.base,
               "refractive_index": self.refractive_index, "illumination": self.illumination,
               "wavelength_step": self.wavelength_step}
        if self.method == "monte_carlo":  # diffusion configs (and the files recording them) stay as they were
            cfg["photons"] = self.photons
        return cfg

    def check_parameters(self, x: Tensor) -> Tensor:
        """Base-class checks plus the physical domain (not the prior box): ``0 <= sO2, v_hb <= 1``, ``a_mie > 0``,
        ``0 <= g < 1``, ``d > 0``; a ``ValueError`` names the first offending parameter."""
        x = super().check_parameters(x)
        bad = ~self._in_domain(x)
        if bad.any():
            j = int(bad.nonzero()[0, 1])
            raise ValueError(f"tissue_spectra: parameter {self.param_names[j]!r} outside its physical domain "
                             f"({PHYSICAL_DOMAIN[j % len(LAYER_PARAMS)]}), e.g. value {float(x[bad][0]):g}")
        return x

    def _in_domain(self, x: Tensor) -> Tensor:
        """Elementwise physical validity, shape ``(n, D)``."""
        p = x.reshape(x.shape[0], self.num_layers, len(LAYER_PARAMS))
        ok = torch.stack([(p[..., 0] >= 0) & (p[..., 0] <= 1), (p[..., 1] >= 0) & (p[..., 1] <= 1), p[..., 2] > 0,
                          torch.ones_like(p[..., 3], dtype=torch.bool), (p[..., 4] >= 0) & (p[..., 4] < 1),
                          p[..., 5] > 0], -1)
        return ok.reshape(x.shape)

    # -- physics ------------------------------------------------------------------------------------------------
    def _illumination(self, lam: Tensor) -> Tensor:
        if self.illumination is None:
            return torch.ones_like(lam)
        tab = torch.tensor(sorted(self.illumination), dtype=torch.float64)
        if tab.ndim != 2 or tab.shape[1] != 2 or not torch.isfinite(tab).all() or (tab[:, 1] < 0).any():
            raise ValueError("tissue_spectra: illumination must be [[wavelength_nm, power >= 0], ...]")
        return _interp(lam.clamp(tab[0, 0], tab[-1, 0]), tab[:, 0].contiguous(), tab[:, 1].contiguous())

    def _extinction(self, lam: Tensor) -> Tensor:
        """Molar extinction ``(eps_HbO2, eps_Hb)`` in cm^-1/M at wavelengths ``lam`` (nm), shape ``(2, L)``."""
        lo, hi = float(self._lam_tab[0]), float(self._lam_tab[-1])
        if not ((lam >= lo) & (lam <= hi)).all():
            raise ValueError(f"tissue_spectra: wavelengths must lie in [{lo:g}, {hi:g}] nm")
        return torch.stack([_interp(lam, self._lam_tab, e) for e in self._eps_tab])

    def _chunk(self, num_wavelengths: int) -> int:
        """Rows per chunk: small enough that temporaries stay in cache and run without thread hand-offs."""
        return max(1, CHUNK_ELEMENTS // (self.num_layers * num_wavelengths))

    def _optics(self, x: Tensor, lam: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``mu_a``, ``mu_s'`` (cm^-1, floor not applied), ``g`` and ``d`` (cm) per layer, shapes ``(N, n, L)`` and
        ``(N, n, 1)``."""
        p = x.to(torch.float64).reshape(x.shape[0], self.num_layers, len(LAYER_PARAMS)).permute(1, 0, 2)
        so2, v_hb, a_mie, b_mie, g, d = (p[..., j, None] for j in range(len(LAYER_PARAMS)))  # (N, n, 1)
        eps = eps.to(p.device)
        mu_a = v_hb * (math.log(10) * C_HB / M_HB) * (so2 * eps[0] + (1 - so2) * eps[1])  # (N, n, L)
        mu_sp = a_mie * (lam.to(p.device) / 500.0) ** (-b_mie)
        return mu_a, mu_sp, g, d

    def _reflectance(self, x: Tensor, lam: Tensor, eps: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mu_a, mu_sp, g, d = self._optics(x, lam, eps)
        if self.method == "monte_carlo":
            return self._mc_reflectance(mu_a, mu_sp, g, d, generator)
        return diffuse_reflectance(mu_a, mu_sp, g, d, A=self.A, semi_infinite_base=self.base == "semi_infinite")

    def _mc_reflectance(self, mu_a: Tensor, mu_sp: Tensor, g: Tensor, d: Tensor,
                        generator: torch.Generator | None) -> Tensor:
        """Monte Carlo diffuse reflectance, shape ``(n, L)``: one layer stack per row and wavelength, with
        ``photons * min(MC_BOOST, R_max / R)`` photons where ``R`` is the diffusion estimate (``R_max`` the row's
        brightest), so that the relative error is about even across the spectrum."""
        pilot = diffuse_reflectance(mu_a, mu_sp, g, d, A=self.A, semi_infinite_base=self.base == "semi_infinite")
        boost = (pilot.amax(-1, keepdim=True) / pilot.clamp_min(1e-12)).clamp(1, MC_BOOST)
        counts = (self.photons * boost).round().to(torch.int64).reshape(-1)
        num, rows, num_lam = mu_a.shape
        mu_a = mu_a.clamp_min(MU_A_FLOOR)
        g = g.expand(num, rows, num_lam)
        mu_s = mu_sp / (1 - g)
        d = d.expand(num, rows, num_lam)
        if self.base == "semi_infinite":
            d = torch.cat([d[:-1], torch.full_like(d[-1:], math.inf)])
        stack = [t.permute(1, 2, 0).reshape(rows * num_lam, num) for t in (mu_a, mu_s, g, d)]
        res = photon_mc(*stack[:3], torch.full_like(stack[0], self.refractive_index), stack[3],
                        photons=counts, generator=generator, n_above=1.0, n_below=self.refractive_index,
                        max_steps=MC_MAX_STEPS, warn=False)
        return res.reflectance.reshape(rows, num_lam)

    def reflectance(self, x: Tensor, wavelengths: Tensor | None = None, *,
                    generator: torch.Generator | None = None) -> Tensor:
        """Diffuse reflectance before the camera, shape ``(n, L)``, at ``wavelengths`` (nm; default the grid).

        With ``method="monte_carlo"`` it is a Monte Carlo estimate drawn from ``generator`` (a fresh, randomly
        seeded one when ``None``); the diffusion mode ignores ``generator``.

        Example:
            >>> sim = TissueSpectra()
            >>> r = sim.reflectance(sim.prior.mean[None], torch.tensor([560.0, 700.0]))
            >>> bool(r[0, 0] < r[0, 1])  # blood absorbs green far more than red
            True
        """
        x = self.check_parameters(x)
        lam = self.wavelengths if wavelengths is None else torch.as_tensor(wavelengths, dtype=torch.float64)
        if lam.ndim != 1:
            raise ValueError(f"tissue_spectra: wavelengths must be 1-D, got shape {tuple(lam.shape)}")
        eps = self._eps_grid if wavelengths is None else self._extinction(lam)
        if x.shape[0] == 0:
            return torch.empty(0, len(lam), dtype=x.dtype, device=x.device)
        if self.method == "monte_carlo":
            return self._reflectance(x, lam, eps, self._generator(generator, x)).to(x.dtype)
        chunk = self._chunk(len(lam))
        return torch.cat([self._reflectance(x[i:i + chunk], lam, eps) for i in range(0, x.shape[0], chunk)]).to(x.dtype)

    def band_intensities(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Noise-free normalised camera intensities ``ybar(x)`` (sum 1 over bands), shape ``(n, M)``.

        With ``method="monte_carlo"`` they carry the Monte Carlo noise of the reflectance (drawn from ``generator``,
        a fresh, randomly seeded one when ``None``), not the camera noise.
        """
        x = self.check_parameters(x)
        return self._bands(x, self._generator(generator, x)).to(x.dtype)

    def _generator(self, generator: torch.Generator | None, x: Tensor) -> torch.Generator | None:
        if self.method != "monte_carlo" or generator is not None:
            return generator
        generator = torch.Generator(device=x.device)
        generator.seed()
        return generator

    def _bands(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Normalised noise-free intensities in float64, shape ``(n, M)``, computed in chunks of rows (Monte Carlo:
        all rows at once, ``photon_mc`` streams the photons itself)."""
        weights = self._band_weights.to(x.device)
        chunk = x.shape[0] if self.method == "monte_carlo" else self._chunk(len(self.wavelengths))
        out = []
        for start in range(0, x.shape[0], max(chunk, 1)):
            bands = self._reflectance(x[start:start + chunk], self.wavelengths, self._eps_grid, generator) @ weights
            out.append(bands / bands.sum(-1, keepdim=True))
        return torch.cat(out) if out else torch.empty(0, self.obs_dim, dtype=torch.float64, device=x.device)

    def _simulate(self, x: Tensor, generator: torch.Generator) -> Tensor:
        out = self._bands(x, generator).to(x.dtype)
        if self.noise > 0:
            eps = torch.randn(out.shape, generator=generator, device=x.device, dtype=x.dtype)
            out = out * torch.exp(self.noise * eps)
        return out

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        """Exact ``log p(y | x)`` of the log-normal noise, shape ``(n,)``.

        ``-inf`` where some ``y_b <= 0`` or ``x`` is outside the physical domain (see :meth:`check_parameters`).

        ``y`` of shape ``(M,)`` or ``(n, M)`` broadcasts against ``x`` of shape ``(n, D)``.

        Only for ``method="diffusion"``: with ``"monte_carlo"`` the Monte Carlo noise of the reflectance is part of
        the simulation and its distribution has no closed form, so a ``NotImplementedError`` says so (plugging in
        a Monte Carlo mean would give a noisy likelihood that ignores that noise).
        """
        if self.method == "monte_carlo":
            raise NotImplementedError(
                "tissue_spectra with method='monte_carlo' has no tractable likelihood: the Monte Carlo noise of the "
                "reflectance is part of the simulation and its distribution is not known in closed form; use "
                "method='diffusion' for the exact likelihood of the diffusion model"
            )
        if self.noise <= 0:
            raise NotImplementedError(
                "tissue_spectra with noise=0 is deterministic and has no likelihood; "
                "use get_simulator('tissue_spectra', noise=0.05) for a tractable likelihood"
            )
        x = Simulator.check_parameters(self, x)
        self.check_observation(y)  # shape and finiteness; it casts to the default dtype, so keep y's precision
        y = torch.as_tensor(y, dtype=torch.float64, device=x.device).reshape(-1, self.obs_dim)
        if y.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"tissue_spectra: {y.shape[0]} observations for {x.shape[0]} parameter vectors")
        valid = self._in_domain(x).all(-1)  # outside the physical domain: likelihood 0 (e.g. MCMC proposals)
        ybar = self._bands(torch.where(valid[:, None], x, self.prior.mean.to(x)))
        pos = (y > 0).all(-1)
        log_y = torch.log(y.clamp_min(1e-300))
        r = (log_y - torch.log(ybar)) / self.noise
        m = self.obs_dim
        logp = -0.5 * (r**2).sum(-1) - log_y.sum(-1) - m * math.log(self.noise) - 0.5 * m * math.log(2 * math.pi)
        return torch.where(pos & valid, logp, torch.full_like(logp, -math.inf)).to(x.dtype)
