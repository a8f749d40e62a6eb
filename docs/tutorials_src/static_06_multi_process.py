"""
6. Several processes or GPUs
============================

When one device is full, :class:`pint.DistributedExecutor` spreads the blocks over
processes started by ``torchrun``: each rank owns a contiguous share of the blocks and
runs their fine solves batched, the boundary states travel to the next rank with
``torch.distributed`` point-to-point messages (so the coarse correction pipelines along
the ranks, as in classic distributed Parareal), the stopping test is agreed by all ranks,
and at the end every rank holds the same :class:`pint.Result` as the single-process call.
gloo on CPUs, NCCL on GPUs (one per rank, ``cuda:LOCAL_RANK``).

This page is not run while the documentation is built (it needs several processes). Run
it with::

    torchrun --nproc-per-node 2 examples/distributed.py
    torchrun --nproc-per-node 4 examples/distributed.py --pipelined

which solves the Lorenz system and samples a Gaussian-mixture diffusion model with SRDS on
every rank and checks both against the single-process calls.
"""

# %%
# The only change to a single-process script is the executor
# ------------------------------------------------------------
# Create the default process group (``torchrun`` sets the rank and world size in the
# environment), then pass ``executor=pint.DistributedExecutor()`` to
# :func:`pint.parareal` or :func:`adapters.diffusion.srds_sample`. Every rank must call
# with the same arguments; differing shapes, block counts or iteration limits are detected
# at the start and raise on every rank.

import os

import torch
import torch.distributed as dist

import pint
from pint import problems

if torch.cuda.is_available():
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
    else torch.device("cpu")
executor = pint.DistributedExecutor(timeout=120.0)   # seconds any one wait may last

case = problems.get("lorenz", t_end=2.0)              # states on this rank's device:
problem = pint.ODEProblem(case.problem.f, case.problem.y0.to(device), case.problem.t_span)
res = pint.parareal(problem, case.coarse, case.fine, case.num_blocks, case.tol,
                    executor=executor)
print(dist.get_rank(), res.iterations, res.y)        # the same on every rank

# %%
# SRDS with the model replicated on every rank
# --------------------------------------------
# Each rank loads the model (on its own GPU); the blocks of the sampler's grid are shared
# out. ``out.stats.model_calls`` counts this rank's calls, ``out.stats.depth`` the
# critical path across ranks.

from adapters.diffusion import load_pretrained, srds_sample  # noqa: E402

model, schedule = load_pretrained("digits", device=device)   # the same seed on every rank:
x_T = torch.randn(16, *model.sample_shape, generator=torch.Generator().manual_seed(0)).to(device)
out = srds_sample(model, schedule, x_T, 1000, executor=executor)

# %%
# Failures end the run instead of hanging it
# ------------------------------------------
# An exception on one rank is signalled to all others, which raise
# ``pint.DistributedError`` naming the rank; a rank that dies makes the others fail
# within ``timeout``. The measured CPU scaling and the cost model for R devices are on the
# benchmarks page (``benchmarks/bench_distributed.py``).

dist.destroy_process_group()
