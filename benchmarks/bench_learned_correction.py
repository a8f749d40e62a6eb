"""Classic vs learned Parareal correction (``pint.parareal(..., correction="learned")``).

    python benchmarks/bench_learned_correction.py [--quick] [--out DIR]

* ``catalog``: Burgers, Brusselator, Allen-Cahn and the 2-D Brusselator reaction-diffusion
  system at the catalog's setup and tolerance: iterations, sequential depth (the learned
  run's includes one step per fit and per model evaluation on the critical path), fits,
  wall-clock, error against serial;
* ``harder``: setups where classic Parareal needs more iterations (a cheaper coarse
  propagator, the linear heat equation, Dahlquist, a stiff 2-D reaction-diffusion variant
  with an implicit coarse step);
* ``all_catalog``: classic vs default learned on every catalog problem at its setup (the
  "never more iterations" check);
* ``models``: every model of :mod:`pint.learned` with the fallback on, on the quick
  problems, the measurement behind the default;
* ``anchors``: the published setups of :mod:`pint.problems.anchors` (RandNet-Parareal's
  viscous Burgers and 2-D diffusion-reaction, GParareal's FitzHugh-Nagumo, nnGParareal's
  Lorenz): classic, the default and each single model, next to the iterations the papers'
  code reports.

Writes ``benchmarks/results/learned_correction.json`` and ``learned_correction.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import pint
from pint import problems
from pint.learned import MODELS
from pint.problems import anchors

RESULTS = Path(__file__).resolve().parent / "results"


_SERIAL: dict[int, tuple] = {}


def serial(case):
    """The serial fine solution of ``case``, computed once per case object."""
    if id(case) not in _SERIAL:
        _SERIAL[id(case)] = (case, pint.serial(case.problem, case.fine, case.num_blocks))
    return _SERIAL[id(case)][1]


def run(case, correction, coarse=None) -> dict:
    """One Parareal solve of ``case`` and its figures."""
    coarse = coarse or case.coarse
    t = time.perf_counter()
    try:
        res = pint.parareal(case.problem, coarse, case.fine, case.num_blocks, case.tol,
                            correction=correction)
    except (pint.NonFiniteStateError, pint.NewtonConvergenceError) as err:  # recorded
        return {"iterations": None, "failed": f"{type(err).__name__}: {str(err)[:200]}",
                "depth": None, "fit_depth": None}
    wall = time.perf_counter() - t
    ref = serial(case)
    s = res.stats
    return {"iterations": res.iterations, "converged": res.converged, "depth": s.depth,
            "fit_depth": s.fit_depth, "fits": s.fits, "model_evals": s.model_evals,
            "serial_depth": ref.stats.depth, "wall_s": round(wall, 3),
            "error_vs_serial": float((res.y - ref.y).abs().max()),
            "history": [float(h) for h in res.history]}


#: the single models run on the published setups (besides the default, "auto")
ANCHOR_MODELS = ("hybrid", "nearest", "gp", "random_features")


def anchor_row(name: str, anchor: anchors.Anchor, quick: bool) -> dict:
    """Classic, the default and (unless ``quick``) each of :data:`ANCHOR_MODELS` on one
    published setup, with the papers' iteration counts."""
    case = anchor.case
    a, b = run(case, "classic"), run(case, pint.LearnedCorrection())
    row = {"problem": name, "state": list(case.problem.y0.shape), "blocks": case.num_blocks,
           "tol": case.tol, "coarse": repr(case.coarse), "fine": repr(case.fine),
           "published": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in anchor.published.items()},
           "source": anchor.source, "classic": a, "learned": b,
           "iteration_ratio": a["iterations"] / b["iterations"],
           "depth_ratio": a["depth"] / b["depth"], "wall_ratio": a["wall_s"] / b["wall_s"],
           "models": {}}
    for m in () if quick else ANCHOR_MODELS:
        r = run(case, pint.LearnedCorrection(model=m))
        row["models"][m] = {k: r[k] for k in ("iterations", "depth", "wall_s", "error_vs_serial")}
    pub = ", ".join(f"{k} {v}" for k, v in anchor.published.items())
    print(f"{name:28s} classic {a['iterations']:3d} | learned {b['iterations']:3d} "
          f"(depth {a['depth']} -> {b['depth']}, wall-clock {row['wall_ratio']:.2f}x) | "
          + "  ".join(f"{m} {v['iterations']}" for m, v in row["models"].items())
          + f"  [{pub}]", flush=True)
    return row


def plot_anchors(ax, rows: list[dict]) -> None:
    """Iterations on the published setups: classic and learned here, and the papers'."""
    x = range(len(rows))
    best = [min(v if isinstance(v, int) else min(v) for k, v in r["published"].items()
                if k != "parareal") for r in rows]
    bars = (([r["classic"]["iterations"] for r in rows], "classic (pint)"),
            ([r["published"]["parareal"] for r in rows], "classic (paper)"),
            ([r["learned"]["iterations"] for r in rows], "learned (pint, default)"),
            (best, "learned (paper's best)"))
    for j, (vals, label) in enumerate(bars):
        ax.bar([i + (j - 1.5) * 0.2 for i in x], vals, 0.2, label=label)
    ax.set_xticks(list(x), [r["problem"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_title("published setups: Parareal iterations")
    ax.legend(fontsize=8)


#: grid layout of the PDE cases for the ``"local"`` model: (grid_dims, boundary)
GRIDS = {"burgers": (1, "periodic"), "allen_cahn": (1, "zeros"), "heat": (1, "zeros"),
         "brusselator_2d": (2, "periodic")}


def compare(label: str, case, coarse=None) -> dict:
    """Classic, learned with the default options, and for grid problems learned with the
    ``"local"`` model told the grid layout."""
    a, b = run(case, "classic", coarse), run(case, pint.LearnedCorrection(), coarse)
    row = {"problem": label, "state": list(case.problem.y0.shape), "blocks": case.num_blocks,
           "tol": case.tol, "coarse": repr(coarse or case.coarse), "fine": repr(case.fine),
           "classic": a, "learned": b,
           "iteration_ratio": a["iterations"] / b["iterations"],
           "depth_ratio": a["depth"] / b["depth"]}  # classic and default never fail here
    line = (f"{label:28s} classic {a['iterations']:2d} it depth {a['depth']:5d} | learned "
            f"{b['iterations']:2d} it depth {b['depth']:5d} (fit {b['fit_depth']})")
    if case.name in GRIDS:
        g, bc = GRIDS[case.name]
        c = run(case, pint.LearnedCorrection(model="local", grid_dims=g, boundary=bc), coarse)
        row["learned_local"] = c
        line += f" | local {c['iterations']} it depth {c['depth']}"
    print(line, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small problems only")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.quick:
        anchor_list = [("diffusion_reaction_randnet",
                        anchors.diffusion_reaction_randnet(fine_steps=10))]
        catalog = []
        harder = [("heat (7 points)", problems.get("heat", points=7), None)]
        model_cases = [("dahlquist, coarse Euler(2)", problems.get("dahlquist"), pint.Euler(2))]
        models = ["linear", "hybrid"]
    else:
        anchor_list = [(n, build()) for n, build in anchors.ANCHORS.items()]
        catalog = [(n, problems.get(n)) for n in ("burgers", "brusselator", "allen_cahn",
                                                    "brusselator_2d")]
        stiff_rd = problems.get("brusselator_2d", b=2.2, diffusion=(0.02, 0.01))
        harder = [("brusselator, coarse RK4(2)", problems.get("brusselator"), pint.RK4(2)),
                  ("van_der_pol", problems.get("van_der_pol"), None),
                  ("heat", problems.get("heat"), None),
                  ("dahlquist", problems.get("dahlquist"), None),
                  ("brusselator_2d stiff, BE(2)", stiff_rd, pint.BackwardEuler(2))]
        model_cases = [("burgers", problems.get("burgers"), None),
                       ("brusselator", problems.get("brusselator"), None),
                       ("brusselator, coarse RK4(2)", problems.get("brusselator"), pint.RK4(2)),
                       ("van_der_pol", problems.get("van_der_pol"), None),
                       ("heat", problems.get("heat"), None),
                       ("brusselator_2d", problems.get("brusselator_2d"), None)]
        models = list(MODELS)

    print("published setups (iterations; the papers' in brackets)")
    anchor_rows = [anchor_row(name, anchor, args.quick) for name, anchor in anchor_list]
    print("catalog setups")
    rows = [compare(label, case) for label, case in catalog]
    print("harder setups")
    hard = [compare(label, case, coarse) for label, case, coarse in harder]
    print("every catalog problem (default options)")
    names = ["dahlquist", "van_der_pol"] if args.quick else problems.names()
    everything = []
    for name in names:
        case = problems.get(name)
        a, b = run(case, "classic"), run(case, pint.LearnedCorrection())
        everything.append({"problem": name, "classic": a["iterations"], "learned": b["iterations"],
                           "classic_depth": a["depth"], "learned_depth": b["depth"]})
        print(f"{name:28s} classic {a['iterations']:2d} ({a['depth']}) | learned "
              f"{b['iterations']:2d} ({b['depth']})", flush=True)
    print("models (fallback on)")
    table: list[dict] = []
    for label, case, coarse in model_cases:
        classic = run(case, "classic", coarse)
        entry = {"problem": label, "classic": classic["iterations"], "models": {}}
        for m in models:
            g, bc = GRIDS.get(case.name, (1, "periodic"))
            opts = pint.LearnedCorrection(model=m, grid_dims=g, boundary=bc)
            r = run(case, opts, coarse)
            entry["models"][m] = {"iterations": r["iterations"], "depth": r["depth"],
                                  "wall_s": r["wall_s"]}
        print(f"{label:28s} classic {classic['iterations']}  " + "  ".join(
            f"{m} {v['iterations']}" for m, v in entry["models"].items()), flush=True)
        table.append(entry)

    defaults = pint.LearnedCorrection()
    result = {
        "what": "iterations and sequential depth of Parareal, classic vs learned correction",
        "default_options": {k: getattr(defaults, k) for k in defaults.__dataclass_fields__},
        "catalog": rows, "harder": hard, "all_catalog": everything, "models": table,
        "anchors": anchor_rows,
        "torch": torch.__version__, "platform": platform.platform(), "quick": args.quick,
    }
    (args.out / "learned_correction.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is optional
        return result
    allrows = rows + hard
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    plot_anchors(axes[0], anchor_rows)
    x = range(len(allrows))
    for ax, key, title in ((axes[1], "iterations", "Parareal iterations, catalog and harder"),
                           (axes[2], "depth", "sequential depth (propagator steps + fits)")):
        ax.bar([i - 0.27 for i in x], [r["classic"][key] for r in allrows], 0.27, label="classic")
        ax.bar(list(x), [r["learned"][key] for r in allrows], 0.27, label="learned (default)")
        ax.bar([i + 0.27 for i in x],
               [r.get("learned_local", r["learned"])[key] or 0 for r in allrows],
               0.27, label="learned, 'local' on grids (else default; 0: failed)")
        ax.set_xticks(list(x), [r["problem"] for r in allrows], rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "learned_correction.png", dpi=110)
    plt.close(fig)
    return result


if __name__ == "__main__":
    main()
