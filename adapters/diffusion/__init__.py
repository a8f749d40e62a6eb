"""Diffusion sampling on the pint engine: SRDS (Parareal over the sampler's ODE).

Public names::

    VPSchedule, SigmaSchedule, SamplingGrid, GridStep, Denoiser, ModelOutputError
    srds_sample, serial_sample, picard_sample, quasi_newton_sample, SampleOutput,
    taa_sample (ParaTAA / ParaSolver / SRDS-initialised), coarse_trajectory,
    sample (sampler="auto"), plan_sampling, CostModel, SamplingPlan, measure_call_cost,
    SamplerStats, DEFAULT_TOL, Precision (the precision a run worked at)
    load_pretrained, available
    GaussianMixtureDenoiser
"""

from .analytic import GaussianMixtureDenoiser
from .auto import measure_call_cost, plan_sampling, sample
from .grid import SamplingGrid
from .model import Denoiser, ModelOutputError
from .ode import DDIMStep, GridStep, block_partition
from .picard import picard_sample, quasi_newton_sample
from .planner import CostModel, SamplingPlan
from .precision import Precision
from .pretrained import available, load_pretrained
from .samplers import (
    DEFAULT_TOL,
    SampleOutput,
    SamplerStats,
    serial_floor,
    serial_sample,
    srds_sample,
)
from .schedule import SigmaSchedule, VPSchedule
from .taa import coarse_trajectory, taa_sample

__all__ = [
    "VPSchedule", "SigmaSchedule", "GridStep", "SamplingGrid", "Denoiser", "ModelOutputError", "DDIMStep",
    "block_partition", "srds_sample", "serial_sample", "SampleOutput", "SamplerStats",
    "DEFAULT_TOL", "serial_floor", "GaussianMixtureDenoiser", "picard_sample",
    "quasi_newton_sample", "sample", "plan_sampling", "CostModel", "SamplingPlan",
    "measure_call_cost", "Precision", "load_pretrained", "available", "taa_sample", "coarse_trajectory",
]
