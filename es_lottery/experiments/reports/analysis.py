"""``docs/results/analysis.md``: ticket transfer, SNR–magnitude statistics, layer-wise ratios, barriers and
curvature (Lange & Sprekeler 2023, Sec. 4–5, appendix A) from COMMITTED per-level archives.

The archives (``analysis.write_archive``: ``<name>.json`` + ``<name>.npz``, exact) live in
``docs/results/analysis/data/``, so the page rebuilds on a fresh clone::

    es-lottery imp configs/imp/mnist_snes_cpu.yaml --out runs             # IMP runs (ES and GD)
    es-lottery transfer runs/<source> --to <target config> --out runs    # transfers
    es-lottery report analysis --add runs/<name> [runs/<name> …]          # archive them, rebuild the page
    es-lottery report analysis                                           # rebuild from the archives alone

An archive whose ``summary`` has a ``transfer`` entry (written by ``es-lottery transfer``) is a transfer;
its native comparison is the archive named like its target config (the target's own IMP ticket and
random-reinit curves). Every statement about the paper's claims is computed from the archives; a claim
without data says so — no number is invented. Barriers and curvature need the runs' test data and are
computed with ``--connectivity`` / ``--curvature`` only.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from es_lottery.experiments.reports.runs import (
    Block,
    _rel,
    figure,
    h,
    p,
    run_blocks,
    table,
    to_html,
    to_markdown,
)

__all__ = ["build_page", "load_archives", "main"]

BARRIER_ZERO = 0.01  # test-error barriers at or below this count as "linearly connected"
PAPER_TRANSFER = "F-MNIST SNES → PGPE: transfer ≈ 0.80, native SNR ticket 0.82, random reinit 0.38 (Fig. 4)"


def load_archives(data: Path) -> dict[str, Any]:
    """Every run archive in ``data`` by name (``analysis.load_archive``)."""
    from es_lottery.analysis import runs as runs_lib

    found = {}
    for f in sorted(Path(data).glob("*.json")):
        try:
            fmt = json.loads(f.read_text()).get("format")
        except (OSError, ValueError):
            continue
        if fmt == runs_lib.ARCHIVE_FORMAT:
            run = runs_lib.load_archive(f)
            found[f.stem] = run
    if not found:
        raise ValueError(
            f"{data}: no run archives (<name>.json + .npz from analysis.write_archive); "
            "add finished runs with: es-lottery report analysis --add RUN_DIR …"
        )
    return found


def _last(values: np.ndarray) -> float:
    v = np.asarray(values, np.float64)[:, -1]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _f(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3f}"


def transfer_blocks(runs: dict[str, Any], fig_dir: Path) -> tuple[list[Block], list[str]]:
    """The transfer section and one claim line per transfer."""
    from es_lottery.analysis import plots as aplots

    blocks: list[Block] = [h(2, "Ticket transfer")]
    claims: list[str] = []
    transfers = {n: r for n, r in runs.items() if (r.summary or {}).get("transfer")}
    if not transfers:
        blocks.append(p("No transfer archive yet (`es-lottery transfer`, then `--add` its view)."))
        return blocks, ["no transfer archive: not yet tested"]
    for name, run in transfers.items():
        info = run.summary["transfer"]
        crit = run.criteria[0]
        score = run.score
        series = {
            f"transfer ({info['source']} {crit} → {info['target_trainer']})": (
                run.densities(crit),
                run.metric(crit, score),
            )
        }
        native = next(
            (r for r in runs.values() if r.config.get("name") == info["target"] and r is not run), None
        )
        source = next(
            (r for r in runs.values() if r.config.get("name") == info["source"] and r is not run), None
        )
        if source is not None and crit in source.criteria:
            series[f"source: {info['source']} {crit}"] = (source.densities(crit), source.metric(crit, score))
        nat_ticket = rnd = math.nan
        if native is not None:
            for c in native.criteria:
                series[f"target's own: {c}"] = (native.densities(c), native.metric(c, score))
            own = next((c for c in ("snr", crit, "magnitude") if c in native.criteria), None)
            nat_ticket = _last(native.metric(own, score)) if own else math.nan
            rnd = (
                _last(native.metric("random_reinit", score))
                if "random_reinit" in native.criteria
                else math.nan
            )
        fig = aplots.transfer_curves(
            series, fig_dir / f"transfer_{name}.png", ylabel=score.replace("_", " "), title=name
        )
        blocks.append(figure(fig, f"{name}: transferred tickets vs the source and the target's own tickets"))
        tr = _last(run.metric(crit, score))
        dens = float(run.densities(crit)[:, -1].mean())
        blocks.append(
            table(
                [
                    "transfer",
                    "density (last level)",
                    "transferred",
                    "target's own ticket",
                    "target random reinit",
                ],
                [[name, f"{dens:.4f}", _f(tr), _f(nat_ticket), _f(rnd)]],
            )
        )
        if native is None:
            verdict = f"no archive of the target {info['target']!r}: no native comparison"
        elif math.isfinite(rnd) and math.isfinite(nat_ticket):
            gap_native, gap_random = nat_ticket - tr, tr - rnd
            ok = gap_random > 0 and gap_native < gap_random
            verdict = (
                f"transfer {_f(tr)} vs native {_f(nat_ticket)} vs random {_f(rnd)} at density {dens:.4f}: "
                + ("reproduced (closer to the native ticket than to random)" if ok else "NOT reproduced")
            )
        else:
            verdict = f"transfer {_f(tr)} vs native {_f(nat_ticket)}; the target has no random_reinit curve"
        claims.append(f"{name}: {verdict}")
    return blocks, claims


def _first_layer(run, c: str) -> float:
    from es_lottery.analysis import stats

    vals = [
        next(iter(stats.layer_fractions(run.level(s, c, run.level_ids[-1]).mask).values())) for s in run.seeds
    ]
    return float(np.mean(vals))


def _ticket(run) -> str:
    """The ticket criterion a run is compared by: SNR for an ES run that has it, else magnitude."""
    return "snr" if "snr" in run.criteria else "magnitude"


def es_gd_pairs(runs: dict[str, Any]) -> list[tuple[str, str]]:
    """(ES run, GD run) names of IMP archives on the same dataset (and arguments) and network."""

    def key(r):
        c = r.config
        args = json.dumps(c.get("dataset_args") or {}, sort_keys=True)
        return (c.get("dataset"), args, str(c.get("network")))

    own = {n: r for n, r in runs.items() if not (r.summary or {}).get("transfer") and r.config.get("dataset")}
    return [
        (e, g)
        for e, re_ in own.items()
        if re_.trainer_type == "es"
        for g, rg in own.items()
        if rg.trainer_type == "gd" and key(rg) == key(re_)
    ]


def geometry_blocks(
    runs: dict[str, Any], fig_dir: Path, connectivity: bool, curvature: bool
) -> tuple[list[Block], dict[str, str]]:
    """ES against GD on the same data and network: the ticket decomposition (ticket − random re-init,
    SNR − magnitude), the error barrier between SEEDS' trained tickets at the first, middle and last level
    (``--connectivity``) and 2-D loss landscapes around seed 0's ticket at the first and last level
    (``--curvature``; filter-normalised random directions, 51 × 51 grid, one population per landscape)."""
    import jax

    from es_lottery.analysis import connectivity as conn
    from es_lottery.analysis import landscape, stats
    from es_lottery.analysis import plots as aplots
    from es_lottery.experiments.reports.runs import _evaluator, fmt_mean

    pairs = es_gd_pairs(runs)
    blocks: list[Block] = [h(2, "ES against GD: ticket effects, seed barriers and landscapes")]
    claims: dict[str, str] = {}
    if not pairs:
        blocks.append(p("No ES archive has a GD archive on the same data and network yet."))
        return blocks, claims
    names = list(dict.fromkeys(n for pair in pairs for n in pair))

    # ticket decomposition from the curves alone
    rows = []
    for n in names:
        run = runs[n]
        acc = {c: run.metric(c, run.score) for c in run.criteria}
        extra = "snr" if "snr" in acc and "magnitude" in acc else None
        eff = stats.ticket_effects(acc, ticket="magnitude", extra_ticket=extra) if "magnitude" in acc else {}
        for k in sorted({0, len(run.level_ids) // 2, len(run.level_ids) - 1}):
            dens = float(run.densities("magnitude")[:, k].mean()) if "magnitude" in acc else math.nan
            rows.append(
                [
                    n,
                    run.level_ids[k],
                    f"{dens:.4f}",
                    fmt_mean(eff["total"][:, k]) if "total" in eff else "–",
                    fmt_mean(eff["extra"][:, k]) if "extra" in eff else "–",
                ]
            )
    blocks += [
        p(
            "Ticket effects (`analysis.stats.ticket_effects`, per seed, mean ± s.e.): `total` = magnitude "
            "ticket − random re-initialisation; `snr − magnitude` = what the ES's per-weight std adds. The "
            "permutation baselines that split `total` further (weights / mask / layer-wise ratio) are not in "
            "these runs' criteria."
        ),
        table(["run", "level", "density", "total (ticket − random reinit)", "snr − magnitude"], rows),
    ]

    evs = {n: _evaluator(runs[n]) for n in names} if (connectivity or curvature) else {}
    if connectivity:
        rows, at = [], {}
        for n in names:
            run, (ev, why) = runs[n], evs[n]
            if ev is None:
                rows.append([n, "–", "–", "–", f"not computed: {why}"])
                continue
            c = _ticket(run)
            if len(run.seeds) < 2:
                rows.append([n, c, "–", "–", "needs ≥ 2 seeds"])
                continue
            for k in sorted({0, len(run.level_ids) // 2, len(run.level_ids) - 1}):
                lid = run.level_ids[k]
                nets = [run.level(s, c, lid).final_params for s in run.seeds]
                pw = conn.pairwise_barriers(ev, nets)
                b = np.asarray([pw.barrier[i, j] for i, j in pw.pairs])
                at[(n, k)] = float(b.mean())
                rows.append([n, c, lid, f"{float(run.densities(c)[:, k].mean()):.4f}", fmt_mean(b)])
        blocks += [
            p(
                "Error barrier between the trained tickets of different SEEDS (every pair; test error along "
                "the straight line, above the line between its ends), at the first, middle and last level. "
                "A barrier ≈ 0 means the seeds' solutions are linearly connected."
            ),
            table(["run", "criterion", "level", "density", "seed barrier (mean ± s.e. over pairs)"], rows),
        ]
        for e, g in pairs:
            if (e, 0) in at and (g, 0) in at:
                claims["seed_barrier"] = (
                    f"seed barrier at level 0: ES {at[(e, 0)]:.3f}, GD {at[(g, 0)]:.3f}; "
                    f"at the last level ES {at[(e, len(runs[e].level_ids) - 1)]:.3f}, "
                    f"GD {at[(g, len(runs[g].level_ids) - 1)]:.3f}"
                )
    if curvature:
        lands, sharp, rise = {}, {}, {}
        for n in names:
            run, (ev, _) = runs[n], evs[n]
            if ev is None:
                continue
            c, s0 = _ticket(run), run.seeds[0]
            for k in sorted({0, len(run.level_ids) - 1}):
                lv = run.level(s0, c, run.level_ids[k])
                key = jax.random.fold_in(jax.random.key(0), 7919 * s0 + lv.level)
                d1, d2 = landscape.random_directions(key, lv.final_params, 2, lv.mask)
                land = landscape.projection_2d(ev, lv.final_params, d1, d2)
                label = f"{n} {c} L{lv.level} ({float(run.densities(c)[0, k]):.2%})"
                lands[label] = land
                g = np.asarray(land.values["cross_entropy"], np.float64)
                mid = g[g.shape[0] // 2, g.shape[1] // 2]
                sharp[label] = float(np.nanmean(g) - mid)  # mean rise of the loss over the window
                rise[(n, k)] = sharp[label]
        if lands:
            fig = aplots.landscape_heatmaps(
                lands,
                fig_dir / "es_vs_gd_landscapes.png",
                metric="cross_entropy",
                log=True,
                title="test loss around seed 0's ticket (filter-normalised random directions)",
            )
            blocks += [
                figure(
                    fig,
                    "log10 test cross-entropy on θ + α·η₁ + β·η₂, α, β ∈ [−1, 1] (51 × 51), around the "
                    "first- and last-level tickets of seed 0",
                ),
                table(
                    ["landscape", "mean rise of the loss over the window (flatter = smaller)"],
                    [[k, f"{v:.3f}"] for k, v in sharp.items()],
                ),
            ]
        for e, g in pairs:
            le, lg = len(runs[e].level_ids) - 1, len(runs[g].level_ids) - 1
            if all(k in rise for k in ((e, 0), (g, 0), (e, le), (g, lg))):
                claims["flatness"] = (
                    f"2-D window (seed 0): loss rise dense ES {rise[(e, 0)]:.2f} vs GD {rise[(g, 0)]:.2f} "
                    f"({'ES flatter' if rise[(e, 0)] < rise[(g, 0)] else 'GD flatter'}), last level ES "
                    f"{rise[(e, le)]:.2f} vs GD {rise[(g, lg)]:.2f} "
                    f"({'ES flatter' if rise[(e, le)] < rise[(g, lg)] else 'GD flatter'})"
                )
    return blocks, claims


def build_page(data: Path, out: Path, connectivity: bool = False, curvature: bool = False) -> Path:
    runs = load_archives(data)
    fig_dir = out.parent / out.stem / "figures"
    numbers, sections = {}, []
    for name, run in runs.items():
        blocks, nums = run_blocks(run, fig_dir, connectivity, curvature, name)
        numbers[name] = nums
        sections += blocks
    tblocks, tclaims = transfer_blocks(runs, fig_dir)
    gblocks, gclaims = geometry_blocks(runs, fig_dir, connectivity, curvature)

    es = {n: r for n, r in runs.items() if r.trainer_type == "es" and not (r.summary or {}).get("transfer")}
    gd = {n: r for n, r in runs.items() if r.trainer_type == "gd" and not (r.summary or {}).get("transfer")}

    def first_layer(group):
        vals = [_first_layer(r, c) for r in group.values() for c in r.criteria if c in ("magnitude", "snr")]
        return float(np.mean(vals)) if vals else math.nan

    fl_es, fl_gd = first_layer(es), first_layer(gd)
    if math.isfinite(fl_es) and math.isfinite(fl_gd):
        input_claim = (
            f"first-layer remaining fraction at the last level: GD {fl_gd:.3f}, ES {fl_es:.3f}: "
            + ("reproduced" if fl_gd > fl_es else "NOT reproduced")
        )
    else:
        input_claim = "needs an ES and a GD IMP archive: not yet tested"

    def across(key: str, group) -> float:  # over the tickets (magnitude / snr), not the baselines
        vals = [
            np.nanmean(numbers[n][key][c])
            for n in group
            for c in numbers[n].get(key, {})
            if c in ("magnitude", "snr")
        ]
        return float(np.mean(vals)) if vals else math.nan

    if connectivity:
        b_es = across("barrier", es)
        barrier_claim = (
            f"mean barrier between consecutive levels of the ES tickets {_f(b_es)} "
            f"(GD {_f(across('barrier', gd))}): "
            + (
                "reproduced (ES levels not linearly connected)"
                if b_es > BARRIER_ZERO
                else "NOT reproduced (ES levels linearly connected)"
            )
            + (f"; {gclaims['seed_barrier']}" if "seed_barrier" in gclaims else "")
            if math.isfinite(b_es)
            else "no ES archive with test data here: not tested"
        )
    else:
        barrier_claim = "not computed (rebuild with --connectivity where the runs' test data is available)"
    if curvature:
        c_es, c_gd = across("curvature", es), across("curvature", gd)
        curv_claim = (
            f"mean 1-D curvature of the tickets over all levels ES {_f(c_es)}, GD {_f(c_gd)}: "
            + (
                "no difference (within 10 %)"
                if abs(c_es - c_gd) <= 0.1 * max(abs(c_es), abs(c_gd))
                else "reproduced (ES flatter)"
                if c_es < c_gd
                else "NOT reproduced"
            )
            + (f"; {gclaims['flatness']}" if "flatness" in gclaims else "")
            if math.isfinite(c_es) and math.isfinite(c_gd)
            else "needs ES and GD archives with test data: not tested"
        )
    else:
        curv_claim = "not computed (rebuild with --curvature where the runs' test data is available)"

    claims = [
        ["tickets transfer (task, ES → ES, ES → GD)", PAPER_TRANSFER, "; ".join(tclaims)],
        [
            "no linear mode connectivity for ES at low sparsity",
            "barrier > 0 between ES levels (Fig. 6 top)",
            barrier_claim,
        ],
        ["ES optima are flatter than GD's", "smaller curvature for ES (Fig. 6 bottom)", curv_claim],
        ["GD prunes the input layer less", "higher first-layer fraction for GD (Fig. 11)", input_claim],
    ]
    blocks = [
        h(1, "Analysis: ticket transfer, pruning statistics, connectivity and curvature"),
        p(
            f"Generated {date.today().isoformat()} by `es-lottery report analysis` from the committed "
            "archives in "
            f"`{_rel(data, out.parent)}`: "
            + ", ".join(f"`{n}`" for n in runs)
            + ". F-MNIST is not available offline here; task "
            "transfer uses same-shape offline pairs (e.g. digit classes 0–4 → 5–9)."
        ),
        h(2, "The paper's claims against these runs"),
        table(["claim", "paper (Lange & Sprekeler 2023)", "here"], claims),
        *tblocks,
        *gblocks,
        h(2, "Per run"),
        *sections,
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(blocks, out.parent))
    out.with_suffix(".html").write_text(to_html(blocks, out.parent, "es-lottery analysis"))
    return out


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        from es_lottery.experiments import analysis_cli

        parser = argparse.ArgumentParser(prog="es-lottery report")
        analysis_cli.register_report_pages(parser.add_subparsers(dest="page", required=True))
        args = parser.parse_args(["analysis", *(argv or [])])
    out = Path(args.out)
    data = Path(args.data) if args.data is not None else out.parent / out.stem / "data"
    if args.add:
        from es_lottery.analysis import runs as runs_lib

        for d in args.add:
            run = runs_lib.load_run(d)
            runs_lib.write_archive(run, data, run.name)
            print(f"archived {d} → {data / run.name}.json/.npz")
    page = build_page(data, out, args.connectivity, args.curvature)
    print(f"wrote {page} and {page.with_suffix('.html')}")
    return 0
