"""The `fundgap` command: argument parsing only; each command calls into the modules.

Every user-facing failure (bad data, bad arguments, unwritable output) ends in one message on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import threading
import tomllib
import warnings
from collections.abc import Sequence
from pathlib import Path

from fundgap import __version__
from fundgap.defaults import BACKENDS, FORMS, SAMPLER, TARGET_ACCEPT_RANGE
from fundgap.errors import FundgapError

EXIT_PROBLEMS = 1
EXIT_INTERRUPTED = 130
# A fit builds and drops millions of small objects (PyTensor rewriting its graphs): at
# CPython's default thresholds (700, 10, 10) the cyclic collector runs thousands of times in
# one fit; at these, a twentieth as often (benchmarks/README.md, "Figures the code cites").
GC_THRESHOLDS = (10_000, 20, 50)


def _simulate(args: argparse.Namespace) -> int:
    from fundgap.contract import read_table
    from fundgap.simulation.development import (
        DEFAULT_N,
        DEFAULT_SEED,
        default_parameters,
        reusable,
        simulate,
        simulation_settings,
        write_simulation,
    )
    from fundgap.simulation.ses import ses_parameters, simulate_ses

    counties = read_table(args.counties, "counties") if args.counties else None
    source = Path(args.counties).name if args.counties else "generated"
    parameters = ses_parameters() if args.design == "ses" else default_parameters()
    if args.params:
        try:
            parameters = tomllib.loads(Path(args.params).read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise FundgapError(f"{args.params}: cannot read parameters: {error}") from None
    if args.design == "ses":
        n = args.n_campaigns or int(parameters.get("n_campaigns", 1930))
        seed = args.seed if args.seed is not None else int(parameters.get("seed", 20220))
        generate, extra = simulate_ses, {"design": "ses"}
    else:
        n = args.n_campaigns or DEFAULT_N
        seed = args.seed if args.seed is not None else DEFAULT_SEED
        generate, extra = simulate, {}
    settings = {**simulation_settings(n, seed, counties, source, parameters), **extra}
    if args.reuse and reusable(args.out, settings):
        print(f"{args.out}: simulated data with these settings already exist; reused")
        return 0
    simulation = generate(n, seed, counties, parameters, source)
    write_simulation(simulation, args.out)
    print(f"{args.out}: {len(simulation.campaigns)} simulated campaigns ({args.design} "
          f"design), {len(simulation.donations)} donations, {len(simulation.ratings)} "
          f"ratings (seed {seed}); truth in {Path(args.out) / 'truth.json'}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from fundgap.contract import validate

    problems = validate(args.data)
    if problems:
        from fundgap.errors import DataContractError

        print(DataContractError(problems, args.data).render(limit=args.limit), file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{args.data}: no problems found")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from fundgap.prepare import PrepareOptions, prepare_folder
    from fundgap.store import TABLE_SUFFIXES, write_json, write_table

    out = Path(args.out)
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise FundgapError(f"{out}: --out must end in {', '.join(TABLE_SUFFIXES)}")
    diagnostics_path = Path(args.diagnostics) if args.diagnostics else \
        out.with_name(f"{out.stem}.diagnostics.json")
    options = PrepareOptions(factor_method=args.factor_method, short_streams=args.short_streams)
    prepared = prepare_folder(args.data, options)
    write_table(prepared.table, out)
    write_json(prepared.diagnostics, diagnostics_path)
    print(f"{out}: {len(prepared.table)} campaigns prepared; diagnostics in {diagnostics_path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from fundgap.batch import run_batch, summary_text

    models = sorted(Path(args.models).glob("*.toml")) if Path(args.models).is_dir() \
        else [Path(args.models)]
    if not models:
        raise FundgapError(f"{args.models}: no model specifications (*.toml)")
    settings = {"draws": args.draws, "tune": args.tune, "chains": args.chains,
                "seed": args.seed, "backend": args.backend, "replicates": args.replicates,
                "target_accept": args.target_accept}
    client = cluster = None
    if args.scheduler or args.workers:
        from distributed import Client, LocalCluster

        if args.scheduler:
            client = Client(args.scheduler)
        else:
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                   processes=True, dashboard_address=None)
            client = Client(cluster)
    try:
        result = run_batch(args.data, models, args.out, settings, args.force, client,
                           progress=not args.quiet)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    print(summary_text(result))
    return EXIT_PROBLEMS if result.failed else 0


def _report(args: argparse.Namespace) -> int:
    from fundgap.report import build_report, write_report

    out = Path(args.out) if args.out else Path(args.fits) / "report.html"
    html, markdown = write_report(build_report(args.fits), out)
    print(f"report: {html} (and {markdown})")
    return 0


def _describe(args: argparse.Namespace) -> int:
    from fundgap.describe import summary_text
    from fundgap.pipeline import load_prepared

    prepared = load_prepared(args.source)
    print(summary_text(prepared.table, prepared.diagnostics))
    return 0


def _fit(args: argparse.Namespace) -> int:
    from fundgap.bayesian import settings_for
    from fundgap.fitfolder import write_fit
    from fundgap.pipeline import fit_bayesian, spec_for

    spec = spec_for(args.spec, args.data)
    settings = settings_for(spec, draws=args.draws, tune=args.tune, chains=args.chains,
                            seed=args.seed, backend=args.backend, form=args.form,
                            progress=not args.quiet, full_summary=args.full_summary,
                            per_campaign=args.per_campaign, centring=args.centring,
                            target_accept=args.target_accept, latent_draws=args.latent_draws)
    result = fit_bayesian(spec, args.data, settings, args.statistics)
    write_fit(result, args.out)
    diagnostics = result.diagnostics
    effects = result.effects[~result.effects["effect"].isin(["share", "a", "b"])]
    print(effects.drop(columns=["sd", "p_positive"]).to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))
    if not result.contrasts.empty:
        contrasts = result.contrasts[result.contrasts["effect"].isin(
            ["total", "direct", "indirect"])]
        print(contrasts.drop(columns=["sd"]).to_string(
            index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"{args.out}: {spec.name}, {diagnostics['form']} form, {diagnostics['backend']}: "
          f"{diagnostics['divergences']} divergences, max R-hat {diagnostics['max_r_hat']:.3f}, "
          f"min bulk ESS {diagnostics['min_ess_bulk']:.0f}, "
          f"{diagnostics['wall_seconds']:.0f} s wall "
          f"({diagnostics['compile_seconds']:.0f} s compiling{_cached(diagnostics)}, "
          f"{diagnostics['sample_seconds']:.0f} s sampling)")
    if not diagnostics["passed"]:
        print(f"fundgap fit: FAILED diagnostics: {'; '.join(diagnostics['reasons'])} "
              f"(the fit is written, marked failed)", file=sys.stderr)
        return EXIT_PROBLEMS
    return 0


def _cached(diagnostics: dict) -> str:
    """How the compiled model was found, where a cache served it."""
    return {"hit": " (from the compile cache)", "in process": " (reused in this process)"
            }.get(diagnostics.get("compile_cache", "off"), "")


def _frequentist(args: argparse.Namespace) -> int:
    from fundgap.pipeline import fit_frequentist, load_prepared, missing_columns, spec_for

    table = load_prepared(args.data).table
    specs = [spec_for(path, table) for path in args.specs]
    missing_columns(specs, table.columns, args.data)
    for spec in specs:
        out = Path(args.out) / spec.name
        result, comparison = fit_frequentist(spec, table, out, args.fits, args.replicates,
                                             args.seed, args.mixedlm, source=args.data)
        flagged = int(comparison["published_outside_frequentist"].eq(True).sum())
        print(f"{out}: {spec.name}: {result.ols.groupby(['table', 'model']).ngroups} "
              f"single-equation models, KHB {'yes' if not result.khb.empty else 'no'}, "
              f"MixedLM {result.mixedlm['equation'].nunique() if not result.mixedlm.empty else 0}"
              f" equations; {int(comparison['published_estimate'].notna().sum())} published "
              f"figures compared, {flagged} outside our frequentist interval")
    return 0


def _robustness(args: argparse.Namespace) -> int:
    from fundgap.fitfolder import failed_variants
    from fundgap.pipeline import fit_robustness, load_prepared
    from fundgap.robustness import robustness_settings
    from fundgap.spec import load_spec

    spec = load_spec(args.spec)
    table = load_prepared(args.data).table
    settings = robustness_settings(spec, draws=args.draws, tune=args.tune, chains=args.chains,
                                   seed=args.seed, progress=not args.quiet)
    side_by_side, loo = fit_robustness(spec, table, args.out, settings, fit=args.fit,
                                       statistics=args.statistics)
    print(side_by_side.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(loo.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    failed = failed_variants(side_by_side)
    if failed:
        print(f"fundgap robustness: FAILED diagnostics: {', '.join(failed)}", file=sys.stderr)
        return EXIT_PROBLEMS
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    import numpy as np

    from fundgap.figures import sensitivity_figure
    from fundgap.fitfolder import SENSITIVITY, SENSITIVITY_THRESHOLDS
    from fundgap.sensitivity import RHO_GRID, folder_sensitivity
    from fundgap.store import atomic_directory, write_table

    rho = np.asarray(args.rho if args.rho else RHO_GRID, dtype=float)
    if np.any(np.abs(rho) >= 1):
        raise FundgapError("--rho: each value must lie strictly between -1 and 1")
    curve, limits = folder_sensitivity(Path(args.fit), rho)
    print(limits.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        with atomic_directory(args.out) as out:
            write_table(curve, out / SENSITIVITY)
            write_table(limits, out / SENSITIVITY_THRESHOLDS)
            for figure in sensitivity_figure(curve, limits):
                (out / f"{figure.name}.png").write_bytes(figure.png)
        print(f"written: {args.out}/{SENSITIVITY}, {SENSITIVITY_THRESHOLDS}, "
              "sensitivity.png")
    return 0


LOW, HIGH = TARGET_ACCEPT_RANGE
TARGET_ACCEPT_HELP = (f"NUTS target acceptance rate, in [{LOW}, {HIGH:g}) (default "
                      f"{SAMPLER['target_accept']}, or the spec's)")


def _acceptance(text: str) -> float:
    """--target-accept: a number in TARGET_ACCEPT_RANGE, else argparse's usage error."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not LOW <= value < HIGH:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [{LOW}, {HIGH:g})")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fundgap", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fundgap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("simulate", help="write a simulated data set with its truth")
    sim.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    sim.add_argument("--design", choices=("development", "ses"), default="development",
                     help="development: the 2025 study (default); ses: the 2022 companion "
                          "study (household SES, four outcomes)")
    sim.add_argument("--seed", type=int, help="default 20250 (development), 20220 (ses)")
    sim.add_argument("--n-campaigns", type=int,
                     help="default 2057 (development), 1930 (ses)")
    sim.add_argument("--counties", help="county table in the contract's format "
                                        "(e.g. ../shared/data/china_counties.csv)")
    sim.add_argument("--params", help="TOML with the keys of fundgap/simulation/development.toml "
                                      "(simulation_ses.toml for --design ses)")
    sim.add_argument("--reuse", action="store_true",
                     help="do nothing if OUT already holds data made with the same settings")
    sim.set_defaults(run=_simulate)

    val = commands.add_parser("validate", help="check a data folder against the contract")
    val.add_argument("data", help="data folder")
    val.add_argument("--limit", type=int, default=200, help="problems to print at most")
    val.set_defaults(run=_validate)

    prep = commands.add_parser("prepare", help="write the analysis-ready table")
    prep.add_argument("data", help="data folder")
    prep.add_argument("--out", required=True,
                      help="prepared table: .csv, .parquet or .dta (Stata 14+, R's haven)")
    prep.add_argument("--diagnostics", help="JSON of the factor and other diagnostics "
                                            "(default: OUT's name + .diagnostics.json)")
    prep.add_argument("--short-streams", choices=("fallback", "missing"), default="fallback",
                      help="derived capacity of campaigns with 300 donations or fewer")
    prep.add_argument("--factor-method", choices=("pcf", "pa"), default="pcf")
    prep.set_defaults(run=_prepare)

    fit = commands.add_parser("fit", help="fit a model spec to a data folder or prepared table")
    fit.add_argument("spec", help="model specification, e.g. models/regional_mediation.toml")
    fit.add_argument("--data", required=True, help="data folder or prepared table")
    fit.add_argument("--out", required=True, help="fit folder to write (replaced atomically)")
    fit.add_argument("--draws", type=int, help="per chain (default 1000, or the spec's "
                                                "[sampler] draws)")
    fit.add_argument("--tune", type=int, help="per chain (default 1000, or the spec's)")
    fit.add_argument("--chains", type=int, help="default 4, or the spec's")
    fit.add_argument("--target-accept", type=_acceptance, help=TARGET_ACCEPT_HELP)
    fit.add_argument("--seed", type=int, default=20250)
    fit.add_argument("--backend", choices=BACKENDS, default="nutpie")
    fit.add_argument("--form", choices=FORMS,
                     default=None,
                     help="default auto, or the spec's [sampler] form; "
                          "auto: intercepts integrated out exactly for gaussian equations "
                          "(by a Laplace approximation for the families measured accurate, "
                          "defaults.LAPLACE_AUTO); laplace: by Laplace wherever it applies "
                          "(count, binary, share equations); exact: exactly for gaussian "
                          "equations, the others explicit; marginal: as exact, for models "
                          "of gaussian equations only; explicit: none")
    fit.add_argument("--centring", choices=("auto", "noncentred", "centred"), default=None,
                     help="explicit intercepts; auto: centred for a grouping whose median "
                          "level holds 50 campaigns or more, else non-centred")
    fit.add_argument("--full-summary", action="store_true",
                     help="ArviZ diagnostics for every county and prefecture intercept too")
    fit.add_argument("--statistics", choices=("auto", "always", "never"), default="auto",
                     help="fit from sufficient statistics read from a prepared .parquet in "
                          "chunks (bounded memory, no per-campaign quantities); auto: when "
                          "every equation is gaussian and the table has over 200,000 rows")
    fit.add_argument("--per-campaign", choices=("auto", "thinned", "skip"), default=None,
                     help="posterior predictive and pointwise log likelihood: thinned "
                          "draws, or skipped (auto: skipped when fitting from statistics)")
    fit.add_argument("--latent-draws", type=int, default=None,
                     help="draws of the county and prefecture intercepts kept in "
                          "posterior.nc (default 500; 0: every draw); effects and summaries "
                          "use every draw either way")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(run=_fit)

    freq = commands.add_parser(
        "frequentist", help="the study's OLS/logit, KHB and MixedLM on the same specs, and "
                            "the side-by-side comparison with the published figures")
    freq.add_argument("specs", nargs="+", help="model specifications (models/*.toml)")
    freq.add_argument("--data", required=True, help="data folder or prepared table")
    freq.add_argument("--out", required=True,
                      help="folder; each spec's tables go to OUT/<spec name>/ (replaced "
                           "atomically)")
    freq.add_argument("--fits", help="folder of Bayesian fits (FITS/<spec name>/) whose "
                                     "posterior joins the comparison")
    freq.add_argument("--replicates", type=int, default=999, help="bootstrap replicates")
    freq.add_argument("--seed", type=int, default=20250, help="bootstrap seed")
    freq.add_argument("--mixedlm", choices=("outcome", "all", "none"), default="outcome",
                      help="which equations get a MixedLM with the spec's random intercepts")
    freq.set_defaults(run=_frequentist)

    rob = commands.add_parser(
        "robustness", help="Table 4 without dropping counties: the spec on all campaigns, "
                           "the study's subsets and pooling variants, and a LOO comparison")
    rob.add_argument("spec", help="model specification with county and prefecture groups")
    rob.add_argument("--data", required=True, help="data folder or prepared table")
    rob.add_argument("--out", required=True,
                     help="folder for robustness.csv, loo.csv and robustness.json")
    rob.add_argument("--fit", help="the spec's fit folder (fundgap fit) on these data: it serves "
                                   "as the spec as written instead of a refit")
    rob.add_argument("--draws", type=int, help="default: the spec's [robustness], [sampler]")
    rob.add_argument("--tune", type=int)
    rob.add_argument("--chains", type=int)
    rob.add_argument("--seed", type=int)
    rob.add_argument("--statistics", choices=("auto", "always", "never"), default="auto",
                     help="fit the variants from sufficient statistics (auto: a table of over "
                          "200,000 rows whose equations are all Gaussian)")
    rob.add_argument("--quiet", action="store_true", help="no progress bar")
    rob.set_defaults(run=_robustness)

    sens = commands.add_parser(
        "sensitivity", help="how much unmeasured mediator-outcome confounding (rho) would "
                            "explain each indirect effect of a fit away")
    sens.add_argument("fit", help="a fit folder (fundgap fit or run)")
    sens.add_argument("--rho", type=float, nargs="+",
                      help="correlations to evaluate (default -0.9 to 0.9 by 0.05)")
    sens.add_argument("--out", help="folder for sensitivity.csv, sensitivity_thresholds.csv "
                                    "and sensitivity.png (default: print the thresholds)")
    sens.set_defaults(run=_sensitivity)

    run = commands.add_parser(
        "run", help="validate, prepare and fit every spec (Bayesian and frequentist) on one "
                    "or more data sets; resumable, locally or on a Dask cluster")
    run.add_argument("--data", action="append", required=True,
                     help="data folder, or a folder of data folders; may be given again")
    run.add_argument("--models", default="models", help="folder of specs, or one spec")
    run.add_argument("--out", default="fits",
                     help="fits land in OUT/<data name>/<spec>/, the index in "
                          "OUT/index.parquet")
    run.add_argument("--force", action="store_true", help="refit even what is current")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="start a local Dask cluster of N workers")
    where.add_argument("--scheduler", help="address of a running Dask scheduler "
                                           "(tcp://HOST:PORT)")
    run.add_argument("--draws", type=int, help="per chain (default: each spec's own)")
    run.add_argument("--tune", type=int)
    run.add_argument("--chains", type=int)
    run.add_argument("--target-accept", type=_acceptance, help=TARGET_ACCEPT_HELP)
    run.add_argument("--seed", type=int)
    run.add_argument("--backend", choices=BACKENDS)
    run.add_argument("--replicates", type=int, help="KHB bootstrap replicates (999)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(run=_run)

    rep = commands.add_parser(
        "report", help="one self-contained HTML page (and Markdown) of a data set's fits")
    rep.add_argument("fits", help="a data set's fits folder (fits/<data name>)")
    rep.add_argument("--out", help="HTML file (default FITS/report.html); the .md beside it")
    rep.set_defaults(run=_report)

    desc = commands.add_parser("describe", help="summarise a data folder or prepared table")
    desc.add_argument("source", help="data folder or prepared table")
    desc.set_defaults(run=_describe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fundgap` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    # nutpie samples through numba, which needs no BLAS; PyTensor's C backend warns anyway
    warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    # SIGTERM (a scheduler, `kill`) ends the command as Ctrl-C does: the folder being
    # written is removed, those finished stay, and a rerun resumes
    terminate = (signal.signal(signal.SIGTERM, _interrupt)
                 if threading.current_thread() is threading.main_thread() else None)
    try:
        return args.run(args)
    except FundgapError as error:
        print(f"fundgap {args.command}: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    except OSError as error:
        print(f"fundgap {args.command}: {error.strerror or error}: "
              f"{error.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        what = ("the fits finished before it are kept, the one in progress was not "
                "written; run it again to resume" if args.command == "run"
                else "nothing was written")
        print(f"fundgap {args.command}: interrupted; {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        gc.set_threshold(*thresholds)
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
