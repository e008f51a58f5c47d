"""Vectorised photon Monte Carlo for the total reflectance and transmittance of a stack of homogeneous layers.

The rules are those of MCML (L. Wang, S. L. Jacques, L. Zheng, "MCML -- Monte Carlo modeling of light transport
in multi-layered tissues", Comput. Methods Programs Biomed. 47 (1995) 131-146; section numbers below refer to the
accompanying manual, L. Wang and S. L. Jacques, "Monte Carlo Modeling of Light Transport in Multi-layered Tissues
in Standard C", 1992), written anew in torch for a whole batch of photons in a whole batch of tissues at once:

* launch (sec. 3.1): a pencil beam at normal incidence. The specular reflectance
  ``R_sp = ((n_above - n_1) / (n_above + n_1))^2`` is removed from the launched weight ``w = 1 - R_sp`` and
  reported separately; the reflectance returned is the diffuse reflectance ``R_d`` (without ``R_sp``). For the total
  (laterally integrated) reflectance a pencil beam and a broad uniform beam give the same number, so nothing lateral
  is tracked: in a laterally infinite, homogeneous stack the depth ``z`` and the direction cosine ``u_z`` alone form
  a Markov chain (the scattering rule below updates ``u_z`` from ``u_z`` and the sampled angles only).
* step size (sec. 3.2): each photon carries the optical depth it still has to travel before its next interaction,
  drawn as ``-ln(xi)`` (exponential, unit mean); in a layer of interaction coefficient ``mu_t = mu_a + mu_s`` this is
  the distance ``tau / mu_t``. A step that reaches a boundary stops there and keeps the rest of its optical depth
  for the next layer (MCML eq. 3.30); a clear layer (``mu_t = 0``) consumes none.
* absorption (sec. 3.4): implicit, the weight is multiplied by the albedo ``mu_s / mu_t`` at every interaction
  (the absorbed part ``w mu_a / mu_t`` is tallied).
* scattering (sec. 3.5): Henyey-Greenstein phase function (L. G. Henyey, J. L. Greenstein, Astrophys. J. 93 (1941)
  70), sampled by its inverse distribution function (MCML eq. 3.28)
  ``cos(theta) = (1 + g^2 - ((1 - g^2) / (1 - g + 2 g xi))^2) / (2 g)`` (``2 xi - 1`` for ``g = 0``), azimuth
  uniform, ``u_z' = u_z cos(theta) + sin(theta) cos(phi) sqrt(1 - u_z^2)`` (MCML eq. 3.32, z component).
* boundaries (secs. 3.6-3.7): at the top surface, at internal interfaces and at the bottom of the stack the photon
  is reflected with the probability of the unpolarised Fresnel reflectance
  ``R = (r_s^2 + r_p^2) / 2``, ``r_s = (n_i c_i - n_t c_t) / (n_i c_i + n_t c_t)``,
  ``r_p = (n_i c_t - n_t c_i) / (n_i c_t + n_t c_i)`` (``R = 1`` beyond the critical angle; M. Born and E. Wolf,
  Principles of Optics, sec. 1.5.2; MCML eq. 3.20), otherwise refracted by Snell's law (``c_t`` the cosine of the
  refraction angle). Leaving through the top adds the photon's whole weight to ``R_d``, through the bottom to the
  total transmittance ``T_t`` (MCML's all-or-none scheme). The stack ends on an ambient medium of index ``n_below``,
  or, when the deepest layer's thickness is ``inf``, the deepest layer is semi-infinite.
* termination (sec. 3.8): Russian roulette, a photon whose weight falls below ``1e-4`` survives with probability
  ``1/10`` with ten times its weight, else it ends (unbiased). The loop is bounded by ``max_steps`` interactions or
  boundary hits per photon; photons still travelling then are counted (``alive``) and their weight is reported
  (``unfinished``): ``R_d`` and ``T_t`` are then lower bounds, short of the truth by at most ``unfinished``.

Estimates and errors: each photon contributes the weight it carries out through the top (or bottom) or zero, so
``R_d`` is the mean of ``photons`` independent tallies and its standard error is their standard deviation over
``sqrt(photons)``. Randomness comes only from the ``generator`` (the same contract as the simulators, see
:mod:`simulators.base`); the computation runs on the device of the input tensors (a GPU when they live there).
Differences from MCML: a photon reflected back out by a clear (``mu_t = 0``) top layer without scattering counts
as diffuse reflectance here (MCML folds multiple reflections in a clear top layer into ``R_sp``); nothing is
resolved in radius, angle or time.

Validation (``tests/simulators/test_photon_mc.py``) against MCML's verification tables (manual ch. 6): a matched
slab (``mu_a = 10``, ``mu_s = 90 cm^-1``, ``g = 0.75``, ``d = 0.02 cm``, ``n = 1``) has ``R_d = 0.09739``,
``T_t = 0.66096`` (van de Hulst 1980; MCML 0.09734 +- 0.00035, 0.66096 +- 0.00020), and a semi-infinite medium with
``n = 1.5`` in air (``mu_a = 10``, ``mu_s = 90 cm^-1``, ``g = 0``) has ``R_d = 0.2600`` (Giovanelli 1955; MCML
0.25907 +- 0.00170).

Example:
    >>> import torch
    >>> res = photon_mc([10.0], [90.0], [0.75], [1.0], [0.02], photons=20_000,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> abs(float(res.reflectance[0]) - 0.09739) < 5 * float(res.reflectance_se[0])
    True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

ROULETTE_THRESHOLD = 1e-4  # MCML's W_th
ROULETTE_CHANCE = 0.1      # MCML's 1/m, m = 10
MAX_STEPS = 100_000        # interactions + boundary hits per photon before it is counted unfinished
CLEAR = 1e-30              # stands in for mu_t = 0 (cm^-1): the optical depth a clear layer consumes is nil
FAR = 1e30                 # stands in for an infinite depth or distance (cm), keeps the arithmetic finite
ISOTROPIC_G = 1e-4         # |g| below this scatters isotropically (the HG inverse CDF loses precision there)
IN_FLIGHT = 2**20          # photons traced at once
CHECK_EVERY = 8            # steps between retiring finished photons and launching new ones
COMPACT_BELOW = 0.75       # compact the arrays when fewer than this fraction of their photons still travel


@dataclass(frozen=True)
class PhotonMCResult:
    """Tallies of :func:`photon_mc`, each of shape ``(T,)`` for ``T`` tissues (fractions of the incident power).

    Attributes:
        reflectance, reflectance_se: diffuse reflectance ``R_d`` (specular excluded) and its Monte Carlo standard
            error.
        transmittance, transmittance_se: total transmittance ``T_t`` through the bottom (unscattered light
            included; zero for a semi-infinite stack) and its standard error.
        absorbed: weight absorbed in the layers.
        specular: specular reflectance ``R_sp`` at entry (exact, not sampled).
        unfinished: weight still carried by photons alive after ``max_steps`` (zero when every photon finished).
        alive: number of those photons (int64).
        photons: photons launched per stack, as given (an integer, or a tensor of shape ``(T,)``).
        steps: loop iterations run (at least the most steps any photon took).
        photon_steps: photon steps computed in all, the measure of the cost (finished photons waiting to be
            dropped from the arrays included).
    """

    reflectance: Tensor
    reflectance_se: Tensor
    transmittance: Tensor
    transmittance_se: Tensor
    absorbed: Tensor
    specular: Tensor
    unfinished: Tensor
    alive: Tensor
    photons: int | Tensor
    steps: int
    photon_steps: int


def fresnel(n_i: Tensor, n_t: Tensor, cos_i: Tensor) -> tuple[Tensor, Tensor]:
    """Unpolarised Fresnel reflectance and the cosine of the refraction angle for light going from index ``n_i``
    into ``n_t`` at incidence cosine ``cos_i`` in ``[0, 1]`` (Born & Wolf sec. 1.5.2); ``R = 1`` beyond the critical
    angle.

    Example:
        >>> r, c = fresnel(torch.tensor(1.0), torch.tensor(1.5), torch.tensor(1.0))
        >>> round(float(r), 4), float(c)
        (0.04, 1.0)
    """
    sin_t2 = (n_i / n_t) ** 2 * (1 - cos_i * cos_i)
    cos_t = torch.sqrt((1 - sin_t2).clamp_min(0))
    rs = (n_i * cos_i - n_t * cos_t) / (n_i * cos_i + n_t * cos_t)
    rp = (n_i * cos_t - n_t * cos_i) / (n_i * cos_t + n_t * cos_i)
    r = 0.5 * (rs * rs + rp * rp)
    r = torch.where(sin_t2 >= 1, torch.ones_like(r), r)
    return torch.where(n_i == n_t, torch.zeros_like(r), r), torch.where(n_i == n_t, cos_i, cos_t)


def hg_coefficients(g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(a, b, c, e)`` with ``cos(theta) = a - b / (c + e xi)^2`` the Henyey-Greenstein inverse distribution function
    (MCML eq. 3.28 rearranged: ``a = (1 + g^2) / 2g``, ``b = (1 - g^2)^2 / 2g``, ``c = 1 - g``, ``e = 2g``); where
    ``|g| < ISOTROPIC_G`` finite stand-ins, since :func:`sample_hg` scatters isotropically there."""
    iso = g.abs() < ISOTROPIC_G
    gs = torch.where(iso, torch.ones_like(g), g)
    return (1 + gs * gs) / (2 * gs), (1 - gs * gs) ** 2 / (2 * gs), 1 - gs, 2 * gs


def sample_hg(g: Tensor, xi: Tensor) -> Tensor:
    """``cos(theta)`` of the Henyey-Greenstein phase function with anisotropy ``g`` from uniforms ``xi`` in
    ``[0, 1)`` (inverse distribution function; isotropic, ``2 xi - 1``, where ``|g| < ISOTROPIC_G``, below which the
    formula loses its precision). :func:`photon_mc` computes the same from tabulated :func:`hg_coefficients`."""
    a, b, c, e = hg_coefficients(g)
    den = c + e * xi
    cos = (a - b / (den * den)).clamp(-1, 1)
    return torch.where(g.abs() < ISOTROPIC_G, 2 * xi - 1, cos)


def _as_table(name: str, value, device) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64, device=device)
    if t.ndim > 2:
        raise ValueError(f"photon_mc: {name} must have shape (layers,) or (tissues, layers), got {tuple(t.shape)}")
    return t


def _check(name: str, ok: Tensor, rule: str, values: Tensor) -> None:
    if not bool(ok.all()):
        bad = values[~ok].reshape(-1)[0]
        raise ValueError(f"photon_mc: {name} must be {rule}, got {float(bad):g}")


def photon_mc(mu_a, mu_s, g, n, d, *, photons: int | Tensor, generator: torch.Generator | None = None,
              n_above: float | Tensor = 1.0, n_below: float | Tensor = 1.0, max_steps: int = MAX_STEPS,
              in_flight: int = IN_FLIGHT, dtype: torch.dtype = torch.float32, warn: bool = True) -> PhotonMCResult:
    """Diffuse reflectance and total transmittance of layer stacks by photon Monte Carlo (MCML rules, see module).

    Args:
        mu_a, mu_s: absorption and scattering coefficients in cm^-1, ``>= 0``, shape ``(N,)`` for one stack of
            ``N`` layers (surface first) or ``(T, N)`` for ``T`` stacks; all five layer arguments broadcast.
        g: Henyey-Greenstein anisotropy, in ``(-1, 1)``.
        n: refractive indices of the layers, ``>= 1``.
        d: thicknesses in cm, ``> 0``; the deepest may be ``inf`` (a semi-infinite last layer, which then needs
            ``mu_a + mu_s > 0``), the others finite.
        photons: photon packets per stack, one integer or one per stack (shape ``(T,)``).
        generator: the only source of randomness (on the device of the inputs); a fresh, randomly seeded one when
            ``None``.
        n_above, n_below: refractive indices of the ambient media above and below (``>= 1``; one number or one per
            stack). ``n_below`` is unused for a semi-infinite stack.
        max_steps: bound on the steps (interactions plus boundary hits) of each photon, checked every
            ``CHECK_EVERY`` steps; photons older are retired and reported as ``alive`` / ``unfinished``.
        in_flight: most photons traced at once (memory: about 60 bytes each). Photons of the next stacks are
            launched as others finish, so the slow tail of long random walks is paid once per call, not per stack.
        dtype: floating dtype of the photon state (float32 by default; the tallies are summed in float64).
        warn: issue a ``RuntimeWarning`` when photons are still alive after ``max_steps``.

    Returns:
        :class:`PhotonMCResult` with tensors of shape ``(T,)`` (``T = 1`` for 1-D inputs), float64, on the inputs'
        device.
    """
    device = mu_a.device if isinstance(mu_a, Tensor) else torch.device("cpu")
    args = {k: _as_table(k, v, device) for k, v in (("mu_a", mu_a), ("mu_s", mu_s), ("g", g), ("n", n), ("d", d))}
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in args.values()))
    except RuntimeError:
        raise ValueError("photon_mc: mu_a, mu_s, g, n and d must broadcast to one shape (tissues, layers), got "
                         + ", ".join(f"{k} {tuple(t.shape)}" for k, t in args.items())) from None
    if len(shape) == 0:
        shape = (1, 1)
    elif len(shape) == 1:
        shape = (1, shape[0])
    T, N = shape
    if N == 0:
        raise ValueError("photon_mc: need at least one layer")
    mu_a, mu_s, g, n, d = (t.expand(shape) for t in args.values())
    if isinstance(photons, int) and not isinstance(photons, bool):
        counts = torch.full((T,), photons, dtype=torch.int64, device=device)
    else:
        counts = torch.as_tensor(photons, device=device)
        if counts.is_floating_point() or counts.dtype == torch.bool or counts.shape not in ((T,), (1,)):
            raise ValueError(f"photon_mc: photons must be a positive integer or {T} of them (one per stack), got "
                             f"{photons!r}")
        counts = counts.to(torch.int64).expand(T)
    if not bool((counts >= 1).all()):
        raise ValueError(f"photon_mc: photons must be positive integers, got {int(counts.min())}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"photon_mc: max_steps must be a positive integer, got {max_steps!r}")
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
        raise ValueError(f"photon_mc: in_flight must be a positive integer, got {in_flight!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"photon_mc: dtype must be torch.float32 or torch.float64, got {dtype}")
    if generator is None:
        generator = torch.Generator(device=device)
        generator.seed()
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"photon_mc: generator must be a torch.Generator, got {type(generator).__name__}")
    if torch.device(generator.device).type != device.type:
        raise ValueError(f"photon_mc: the generator lives on {generator.device} but the inputs on {device}")
    _check("mu_a", torch.isfinite(mu_a) & (mu_a >= 0), "finite and >= 0 (cm^-1)", mu_a)
    _check("mu_s", torch.isfinite(mu_s) & (mu_s >= 0), "finite and >= 0 (cm^-1)", mu_s)
    _check("g", (g > -1) & (g < 1), "in (-1, 1)", g)
    _check("n", torch.isfinite(n) & (n >= 1), "finite and >= 1", n)
    _check("d", (d > 0) & ~torch.isnan(d), "> 0 (cm)", d)
    _check("d", torch.isfinite(d[:, :-1]), "finite above the deepest layer", d[:, :-1])
    semi = torch.isinf(d[:, -1])
    _check("mu_a + mu_s", ~semi | (mu_a[:, -1] + mu_s[:, -1] > 0), "> 0 in a semi-infinite deepest layer",
           mu_a[:, -1] + mu_s[:, -1])
    amb = {}
    for name, value in (("n_above", n_above), ("n_below", n_below)):
        t = torch.as_tensor(value, dtype=torch.float64, device=device)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, T)):
            raise ValueError(f"photon_mc: {name} must be a number or have shape ({T},), got {tuple(t.shape)}")
        t = t.expand(T)
        _check(name, torch.isfinite(t) & (t >= 1), "finite and >= 1", t)
        amb[name] = t

    # per-stack tables, flattened so that a photon finds its layer's values with one index_select
    mu_t = mu_a + mu_s
    absorb = torch.where(mu_t > 0, mu_a / mu_t.clamp_min(1e-300), torch.ones_like(mu_t))  # 1 - albedo
    tab = {
        "mu_t": mu_t.clamp_min(CLEAR),
        "absorb": absorb,
        **dict(zip(("hg_a", "hg_b", "hg_c", "hg_e"), hg_coefficients(g))),
        "iso": (g.abs() < ISOTROPIC_G).to(torch.float64),
    }
    isotropic = bool(tab["iso"].any())
    tab = {k: v.to(dtype).reshape(-1) for k, v in tab.items()}
    bounds = torch.cat([torch.zeros(T, 1, dtype=torch.float64, device=device), d.cumsum(1)], 1)  # (T, N + 1)
    bound_tab = bounds.clamp_max(FAR).to(dtype).reshape(-1)
    n_bot = torch.where(semi, n[:, -1], amb["n_below"])
    n_tab = torch.cat([amb["n_above"][:, None], n, n_bot[:, None]], 1).to(dtype).reshape(-1)  # (T, N + 2)
    specular = ((amb["n_above"] - n[:, 0]) / (amb["n_above"] + n[:, 0])) ** 2

    # photon state. Photons are launched stack after stack as others finish, so at most `in_flight` travel at
    # once; one that left or lost the roulette has w = 0 (inert) until the arrays are compacted.
    ends = counts.cumsum(0)
    total = int(ends[-1])
    in_flight = min(int(in_flight), total)
    itype = torch.int32 if max(total, T * (N + 2), max_steps + total) < 2**31 else torch.int64
    w0 = (1 - specular).to(dtype)
    sums = torch.zeros(7, T, dtype=torch.float64, device=device)  # R, R^2, T, T^2, absorbed, unfinished, alive
    state = {k: torch.empty(0, dtype=t, device=device) for k, t in (
        ("tid", itype), ("born", itype), ("layer", itype), ("z", dtype), ("uz", dtype), ("w", dtype),
        ("tau", dtype), ("acc_r", dtype), ("acc_t", dtype), ("acc_a", dtype))}

    def flush(sel: Tensor, unfinished: Tensor | None = None) -> None:
        """Add the per-photon tallies of the photons ``sel`` to the per-stack sums."""
        t_ = state["tid"][sel]
        r_, tr_, a_ = (state[k][sel].double() for k in ("acc_r", "acc_t", "acc_a"))
        values = [r_, r_ * r_, tr_, tr_ * tr_, a_]
        if unfinished is not None:
            values += [state["w"][sel].double() * unfinished[sel], unfinished[sel].double()]
        for row, v in enumerate(values):
            sums[row].index_add_(0, t_, v)

    launched, steps, work = 0, 0, 0
    while True:
        # -- bookkeeping between runs of CHECK_EVERY steps: retire finished and expired photons, launch new ones
        live = state["w"] > 0
        expired = live & (steps - state["born"] >= max_steps)
        n_expired = int(expired.sum())
        n_live = int(live.sum()) - n_expired
        size = state["w"].numel()
        if n_live < COMPACT_BELOW * size or (launched < total and size < in_flight) or n_live == 0 or n_expired:
            flush(~live | expired, expired)
            keep = (live & ~expired).nonzero().squeeze(1)
            state = {k: v.index_select(0, keep) for k, v in state.items()}
            new = min(in_flight - n_live, total - launched)
            if new > 0:
                tid_new = torch.searchsorted(ends, torch.arange(launched, launched + new, device=device), right=True)
                u0 = torch.rand(new, generator=generator, dtype=dtype, device=device)
                fresh = {"tid": tid_new.to(itype), "born": torch.full((new,), steps, dtype=itype, device=device),
                         "layer": torch.zeros(new, dtype=itype, device=device),
                         "z": torch.zeros(new, dtype=dtype, device=device),
                         "uz": torch.ones(new, dtype=dtype, device=device), "w": w0[tid_new],
                         "tau": torch.log1p(-u0).neg_(),  # optical depth to the first interaction, Exp(1)
                         **{k: torch.zeros(new, dtype=dtype, device=device) for k in ("acc_r", "acc_t", "acc_a")}}
                state = {k: torch.cat([state[k], fresh[k]]) for k in state}
                launched += new
            if state["w"].numel() == 0:
                break
        tid, layer, z, uz, w, tau = (state[k] for k in ("tid", "layer", "z", "uz", "w", "tau"))
        acc_r, acc_t, acc_a = state["acc_r"], state["acc_t"], state["acc_a"]
        cell_base, bound_base, n_base = tid * N, tid * (N + 1), tid * (N + 2) + 1
        work += CHECK_EVERY * z.numel()
        for _ in range(CHECK_EVERY):
            steps += 1
            u = torch.rand((4, z.numel()), generator=generator, dtype=dtype, device=device)
            cell = cell_base + layer
            mt = tab["mu_t"].index_select(0, cell)
            z_b = bound_tab.index_select(0, bound_base + layer + (uz > 0).to(itype))
            dist = torch.nan_to_num((z_b - z) / uz, nan=FAR, posinf=FAR, neginf=FAR).clamp_min_(0)
            s = tau / mt
            h = (s >= dist).nonzero().squeeze(1)         # photons whose step reaches the layer's boundary first
            # -- everyone as if interacting (hop, drop, spin); the photons at a boundary are overwritten below
            z_new = torch.addcmul(z, s, uz)
            tau_new = torch.log1p(-u[0]).neg_()
            da = w * tab["absorb"].index_select(0, cell)   # implicit absorption
            den = torch.addcmul(tab["hg_c"].index_select(0, cell), tab["hg_e"].index_select(0, cell), u[1])
            cos_t = (tab["hg_a"].index_select(0, cell) - tab["hg_b"].index_select(0, cell) / (den * den)).clamp_(-1, 1)
            if isotropic:
                cos_t = torch.lerp(cos_t, 2 * u[1] - 1, tab["iso"].index_select(0, cell))
            sin_t = torch.sqrt((1 - cos_t * cos_t).clamp_min_(0))
            sin_z = torch.sqrt((1 - uz * uz).clamp_min_(0))
            uz_new = torch.addcmul(uz * cos_t, sin_t * sin_z, torch.cos(u[2] * (2 * math.pi)))
            if h.numel() > 0:
                # -- at a boundary: no interaction; Fresnel reflection or refraction (u[1] is free for it)
                uz_h, layer_h, w_h = uz[h], layer[h], w[h]
                down = (uz_h > 0).to(itype)
                z_new.index_copy_(0, h, z_b[h])
                tau_new.index_copy_(0, h, torch.addcmul(tau[h], dist[h], mt[h], value=-1).clamp_min_(0))
                da.index_fill_(0, h, 0)
                nb = n_base[h] + layer_h
                n_i, n_t = n_tab.index_select(0, nb), n_tab.index_select(0, nb + 2 * down - 1)
                refl, cos_r = fresnel(n_i, n_t, uz_h.abs())
                cross = u[1][h] >= refl
                uz_new.index_copy_(0, h, torch.where(cross, torch.copysign(cos_r, uz_h), -uz_h))
                layer_h = layer_h + cross.to(itype) * (2 * down - 1)
                # -- photons leaving the stack through the top (R_d) or the bottom (T_t)
                top, bottom = (layer_h < 0).to(dtype), (layer_h >= N).to(dtype)
                acc_r.index_add_(0, h, w_h * top)
                acc_t.index_add_(0, h, w_h * bottom)
                w.index_copy_(0, h, w_h * (1 - top - bottom))
                layer = layer.index_copy(0, h, layer_h.clamp_(0, N - 1))
            z, tau, uz = z_new, tau_new, uz_new
            w = w - da
            acc_a += da
            # -- roulette (photons already out have w = 0 and keep it)
            low = (w < ROULETTE_THRESHOLD).to(dtype)
            survive = (u[3] < ROULETTE_CHANCE).to(dtype)
            w = w * torch.addcmul(1 - low, low, survive, value=1 / ROULETTE_CHANCE)
        state.update(layer=layer, z=z, uz=uz, w=w, tau=tau)

    alive = sums[6].round().long()
    unfinished = sums[5] / counts
    n_alive = int(alive.sum())
    if warn and n_alive > 0:
        warnings.warn(f"photon_mc: {n_alive} photons still alive after max_steps={max_steps} carry "
                      f"{float(unfinished.max()):.3g} of the incident power (worst stack); the reflectance is "
                      "short by at most that much. Raise max_steps.", RuntimeWarning, stacklevel=2)

    def mean_se(s1: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        mean = s1 / counts
        var = ((s2 - s1 * mean) / (counts - 1)).clamp_min(0)  # nan for a single photon
        return mean, (var / counts).sqrt()

    rd, rd_se = mean_se(sums[0], sums[1])
    tt, tt_se = mean_se(sums[2], sums[3])
    return PhotonMCResult(reflectance=rd, reflectance_se=rd_se, transmittance=tt, transmittance_se=tt_se,
                          absorbed=sums[4] / counts, specular=specular, unfinished=unfinished, alive=alive,
                          photons=photons, steps=steps, photon_steps=work)
