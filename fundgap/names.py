"""Posterior variable names: every one is made here, and recognised here.

Each equation's variables carry the equation's name (its response) as a suffix:

    alpha_<eq>, beta_std_<eq>       sampled: intercept and slopes on standardised predictors
    coefficients_<eq>, intercept_<eq>   reported: on the data's scale
    sigma_<eq> (and other families' own parameters: <parameter>_<eq>)
    <dim>_sd_<eq>                   a grouping's sd (dim: county, prefecture, province, or
                                    the name of any other grouping, as in (1|school))
    signed_<dim>_sd_<eq>            its sampled signed value, where the sd is folded
    <dim>_intercept_<eq>            the latent intercepts of a grouping's levels
    <dim>_z_<eq>, <dim>_level_<eq>  the sampler's non-centred and nested forms of them

Equations whose errors are correlated (fundgap.correlated) share:

    error_correlation               the errors' correlations, one per pair (dim error_pair)
    error_cholesky                  the sampler's packed Cholesky factor of their covariance
"""

from __future__ import annotations

from collections.abc import Iterable

# the sampled (signed) value of a folded sd: this prefix and the saved sd's name
FOLDED_PREFIX = "signed_"
INTERCEPT_INFIX = "_intercept_"
ERROR_CORRELATION = "error_correlation"
ERROR_PAIR_DIM = "error_pair"
ERROR_CHOLESKY = "error_cholesky"


def alpha(equation: str) -> str:
    return f"alpha_{equation}"


def beta_std(equation: str) -> str:
    return f"beta_std_{equation}"


def coefficients(equation: str) -> str:
    return f"coefficients_{equation}"


def intercept(equation: str) -> str:
    return f"intercept_{equation}"


def auxiliary(parameter: str, equation: str) -> str:
    """A family's own parameter (sigma, dispersion, ...) of an equation."""
    return f"{parameter}_{equation}"


def sigma(equation: str) -> str:
    return auxiliary("sigma", equation)


def group_sd(dim: str, equation: str) -> str:
    return f"{dim}_sd_{equation}"


def folded_sd(dim: str, equation: str) -> str:
    """The sampled signed value of a folded group sd (its absolute value is the sd)."""
    return FOLDED_PREFIX + group_sd(dim, equation)


def group_intercept(dim: str, equation: str) -> str:
    return f"{dim}{INTERCEPT_INFIX}{equation}"


def group_z(dim: str, equation: str) -> str:
    return f"{dim}_z_{equation}"


def group_level(dim: str, equation: str) -> str:
    return f"{dim}_level_{equation}"


def is_group_intercept(name: str, groupings: Iterable[str]) -> bool:
    """A grouping level's latent intercept (thousands of series; not reported). `groupings`:
    the grouping dimensions (a design's, or the variable's own dims)."""
    dim, infix, _ = name.partition(INTERCEPT_INFIX)
    return bool(infix) and dim in set(groupings)


def is_sampler_internal(name: str, groupings: Iterable[str]) -> bool:
    """A variable only the sampler needs (non-centred z's, nested levels, transformed
    values): dropped from the saved posterior, which keeps deviations whatever the form."""
    return name.endswith("__") or name == ERROR_CHOLESKY or any(
        name.startswith((f"{dim}_z_", f"{dim}_level_")) for dim in groupings)


def is_folded(name: str) -> bool:
    return name.startswith(FOLDED_PREFIX)


def reported_prefixes(auxiliary_names: tuple[str, ...],
                      groupings: Iterable[str]) -> tuple[str, ...]:
    """The prefixes of the variables the gate checks (the latent intercepts are not), for a
    model with these grouping dimensions."""
    return ("coefficients_", "intercept_", ERROR_CORRELATION,
            *(f"{dim}_sd_" for dim in groupings),
            *(f"{name}_" for name in auxiliary_names))
