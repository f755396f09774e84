"""``es-lottery transfer``: a finished tiny IMP run's tickets retrained elsewhere, stored, resumed, plotted.

Source: digits classes 0–4, MLP [64, 8, 5], SNES (population 4, 2 generations), 2 levels, SNR. Targets:
the source's own config (must repeat the source bit for bit), and GD (Adam) on digits classes 5–9 (the
same shapes).
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from rich.console import Console

from es_lottery import cli
from es_lottery.analysis import runs as R
from es_lottery.experiments import imp
from es_lottery.experiments import transfer as TR
from es_lottery.experiments.reports import analysis as RA
from es_lottery.experiments.reports import runs as RR
from es_lottery.treeio import load_tree

SOURCE = {
    "name": "tiny_src",
    "dataset": "digits",
    "dataset_args": {"classes": [0, 1, 2, 3, 4]},
    "network": {"name": "mlp", "sizes": [64, 8, 5]},
    "trainer": {
        "type": "es",
        "algorithm": "SNES",
        "population_size": 4,
        "sigma_init": 0.05,
        "num_generations": 2,
        "eval_every": 2,
        "batch_size": 32,
        "checkpoint_every": 2,
    },
    "imp": {"num_levels": 2, "prune_rate": 0.2},
    "criteria": ["snr"],
    "seeds": 1,
}

GD_TARGET = {
    "name": "tiny_gd_59",
    "dataset": "digits",
    "dataset_args": {"classes": [5, 6, 7, 8, 9]},
    "network": {"name": "mlp", "sizes": [64, 8, 5]},
    "trainer": {"type": "gd", "epochs": 1, "learning_rate": 0.01, "batch_size": 64},
    "imp": {"num_levels": 2, "prune_rate": 0.2},
    "criteria": ["magnitude"],
    "seeds": 1,
}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    """(the source view, its config file)."""
    root = tmp_path_factory.mktemp("transfer_src")
    cfg = write_yaml(root / "src.yaml", SOURCE)
    view = imp.run_experiment(imp.load_config(cfg), root / "runs", console=quiet())
    return view, cfg


def bits(tree) -> list[bytes]:
    return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(tree)]


def stored_level(view: Path, seed: int, criterion: str, level: int):
    run = R.load_run(view)
    return run.level(seed, criterion, level)


def test_transfer_to_the_source_config_repeats_the_source_bit_for_bit(source, tmp_path):
    view, cfg = source
    out = tmp_path / "runs"
    tview = TR.run_transfer(view, cfg, criterion="snr", out=out, console=quiet())
    src, got = R.load_run(view, criteria=["snr"]), R.load_run(tview)
    assert got.criteria == ("snr",) and got.level_ids == src.level_ids == (0, 1)
    for k in src.level_ids:
        a, b = src.level(0, "snr", k), got.level(0, "snr", k)
        assert bits(a.mask) == bits(b.mask) and bits(a.theta0) == bits(b.theta0)
        # an independent reference: the source's own ES training of that ticket with the same keys
        assert bits(a.final_params) == bits(b.final_params) and bits(a.std) == bits(b.std)
        assert a.test_accuracy == b.test_accuracy
    assert (tview / "plots" / "transfer_vs_native.png").read_bytes()[:4] == b"\x89PNG"


def test_transfer_to_gd_on_other_classes_uses_exactly_the_source_tickets_and_resumes(source, tmp_path):
    view, _ = source
    target = write_yaml(tmp_path / "gd.yaml", GD_TARGET)
    out = tmp_path / "runs"
    rc = cli.main(["transfer", str(view), "--to", str(target), "--out", str(out), "--name", "t"])
    assert rc == 0
    tview = out / "t"
    src, got = R.load_run(view, criteria=["snr"]), R.load_run(tview)
    assert got.trainer_type == "gd"
    data = R._layout(tview, ["snr"])[0]
    for k in (0, 1):
        a, b = src.level(0, "snr", k), got.level(0, "snr", k)
        assert bits(a.mask) == bits(b.mask), f"level {k}: mask differs"
        assert bits(a.theta0) == bits(b.theta0), f"level {k}: θ₀ differs"
        assert b.std is None and b.metrics["kind"] == "transfer" and b.metrics["trainer"].startswith("gd")
        # pruned weights stay exactly zero in the GD-trained params
        for m, p in zip(
            jax.tree_util.tree_leaves(b.mask), jax.tree_util.tree_leaves(b.final_params), strict=True
        ):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
    stored, _ = load_tree(data / "seed_0" / "theta0.npz", src.theta0[0])
    assert bits(stored) == bits(src.theta0[0])
    first = (data / "seed_0/snr/level_1/final_params.npz").read_bytes()

    # resumable: a finished level is skipped, an unfinished one is retrained to the same bytes
    (data / "seed_0/snr/level_1/metrics.json").unlink()
    buf = io.StringIO()
    TR.run_transfer(view, target, out=out, name="t", console=Console(file=buf, width=200))
    log = buf.getvalue()
    assert "seed 0 level 0: finished earlier, skipped" in log and "seed 0 level 1:" in log
    assert "level 1: finished earlier" not in log
    assert (data / "seed_0/snr/level_1/final_params.npz").read_bytes() == first

    # the same source read from its archive has the same key: everything is skipped
    json_path, _ = R.write_archive(R.load_run(view), tmp_path / "archive", "src")
    buf = io.StringIO()
    TR.run_transfer(json_path, target, out=out, name="t2", console=Console(file=buf, width=200))
    assert buf.getvalue().count("finished earlier, skipped") == 2
    assert R.load_run(out / "t2").level(0, "snr", 1).test_accuracy == got.level(0, "snr", 1).test_accuracy


def test_incomplete_source_run_is_named_in_the_error(source, tmp_path):
    view, _ = source
    shutil.copytree(view.parent, tmp_path / "runs")
    broken = tmp_path / "runs" / view.name
    data = R._layout(broken, ["snr"])[0]
    (data / "seed_0" / "snr" / "level_1" / "final_params.npz").unlink()
    target = write_yaml(tmp_path / "gd.yaml", GD_TARGET)
    with pytest.raises(R.RunDirectoryError) as err:
        TR.run_transfer(broken, target, out=tmp_path / "out", console=quiet())
    msg = str(err.value)
    assert str(broken) in msg and "seed_0/snr/level_1/final_params.npz: missing" in msg
    assert not (tmp_path / "out" / "store").exists()  # nothing trained or written
    with pytest.raises(ValueError, match=r"--criterion 'random_reinit'.*snr"):
        TR.run_transfer(view, target, criterion="random_reinit", out=tmp_path / "out", console=quiet())


def test_a_target_network_of_other_shapes_is_refused_naming_the_field(source, tmp_path):
    view, _ = source
    bad = write_yaml(tmp_path / "bad.yaml", {**GD_TARGET, "network": {"name": "mlp", "sizes": [64, 9, 5]}})
    with pytest.raises(
        ValueError, match=r"bad\.yaml: field 'network'.*dense_0/bias: source \(8,\), target \(9,\)"
    ):
        TR.run_transfer(view, bad, out=tmp_path / "out", console=quiet())
    assert cli.main(["transfer", str(view), "--to", str(bad), "--out", str(tmp_path / "out")]) == 2


# ----------------------------------------------------------------------------------------------
# es-lottery report RUN_DIR … and the analysis page


GD_NATIVE = {**GD_TARGET, "criteria": ["magnitude", "random_reinit"]}


@pytest.fixture(scope="module")
def gd_runs(source, tmp_path_factory) -> tuple[Path, Path]:
    """(the GD target's own IMP run, the source's tickets transferred to it), in one output directory."""
    view, _ = source
    root = tmp_path_factory.mktemp("gd_runs")
    cfg = write_yaml(root / "tiny_gd_59.yaml", GD_NATIVE)
    native = imp.run_experiment(imp.load_config(cfg), root / "runs", console=quiet())
    tview = TR.run_transfer(view, cfg, out=root / "runs", console=quiet())
    return native, tview


def referenced_files(page: Path) -> list[Path]:
    text = page.read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) + re.findall(r'<img src="([^"]+)"', text)
    return [page.parent / r for r in refs]


def test_report_writes_markdown_and_html_with_every_figure(source, gd_runs, tmp_path):
    view, _ = source
    native, tview = gd_runs
    out = tmp_path / "report"
    rc = cli.main(
        ["report", str(view), str(native), str(tview), "--out", str(out), "--connectivity", "--curvature"]
    )
    assert rc == 0
    md, page = out / "report.md", out / "report.html"
    md_refs, html_refs = referenced_files(md), referenced_files(page)
    assert md_refs and sorted(md_refs) == sorted(html_refs)
    for f in md_refs:
        assert f.is_file() and f.read_bytes()[:4] == b"\x89PNG", f
    names = {f.name for f in md_refs}
    assert {"tiny_src_performance.png", "tiny_src_snr_layers.png", "tiny_src_snr_rho.png"} <= names
    assert {"tiny_src_snr_overlap.png", "tiny_src_barriers.png", "tiny_src_curvature.png"} <= names
    assert "tiny_gd_59_snr_rho.png" not in names  # GD stores no std: no SNR statistics
    text = md.read_text()
    # the level table holds the stored accuracies (one seed: the value itself)
    src = R.load_run(view)
    for k in (0, 1):
        assert (
            f"| {k} | {src.level(0, 'snr', k).density:.4f} | {src.level(0, 'snr', k).test_accuracy:.4f} |"
            in text
        )
    assert "A transfer: the `snr` tickets of `tiny_src`" in text
    assert "<table>" in page.read_text() and "<img" in page.read_text()


def test_report_of_an_incomplete_run_names_it_and_writes_nothing(source, tmp_path):
    view, _ = source
    shutil.copytree(view.parent, tmp_path / "runs")
    broken = tmp_path / "runs" / view.name
    data = R._layout(broken, ["snr"])[0]
    (data / "seed_0" / "snr" / "level_0" / "mask.npz").unlink()
    out = tmp_path / "report"
    with pytest.raises(R.RunDirectoryError, match=r"seed_0/snr/level_0/mask\.npz: missing"):
        RR.build_report([view, broken], out)
    assert not out.exists()
    assert cli.build_parser().parse_args(["report", "es_imp"]).page == "es_imp"
    assert cli.build_parser().parse_args(["report", "a", "b", "--out", "o"]).run_dirs == [
        Path("a"),
        Path("b"),
    ]


def test_analysis_page_from_archives(source, gd_runs, tmp_path):
    view, _ = source
    native, tview = gd_runs
    data, out = tmp_path / "results" / "analysis" / "data", tmp_path / "results" / "analysis.md"
    assert cli.main(["report", "analysis", "--data", str(data), "--out", str(out)]) == 2
    with pytest.raises(ValueError, match=r"analysis/data: no run archives"):
        RA.build_page(data, out)
    rc = cli.main(["report", "analysis", "--out", str(out), "--add", str(view), str(native), str(tview)])
    assert rc == 0 and (data / "tiny_src.json").is_file() and (data / f"{tview.name}.npz").is_file()
    shutil.rmtree(tmp_path / "results" / "analysis" / "figures")  # rebuilt from the archives alone
    assert cli.main(["report", "analysis", "--out", str(out)]) == 0
    for page in (out, out.with_suffix(".html")):
        refs = referenced_files(page)
        assert refs and all(f.is_file() for f in refs)
    text = out.read_text()
    tr, nat = R.load_run(tview), R.load_run(native)
    last = tr.level_ids[-1]
    want = (
        f"transfer {tr.level(0, 'snr', last).test_accuracy:.3f} vs native "
        f"{nat.level(0, 'magnitude', last).test_accuracy:.3f} vs random "
        f"{nat.level(0, 'random_reinit', last).test_accuracy:.3f}"
    )
    assert want in text
    assert "GD prunes the input layer less" in text and "not computed (rebuild with --connectivity" in text


def test_es_against_gd_seed_barriers_and_landscapes(tmp_path):
    """The ES-vs-GD section: two seeds of an ES and a GD run on the same data and network; the seed barrier
    equals a plain loop over the straight line, and every landscape and claim line is there."""
    from es_lottery import networks
    from es_lottery.tasks import classification

    one = {"num_levels": 1, "prune_rate": 0.2}  # level 0 is the first, middle and last level
    es_cfg = {**SOURCE, "name": "pair_es", "seeds": 2, "criteria": ["magnitude", "snr"], "imp": one}
    gd_cfg = {**GD_TARGET, "name": "pair_gd", "dataset_args": SOURCE["dataset_args"], "seeds": 2, "imp": one}
    runs = {}
    for cfg in (es_cfg, gd_cfg):
        path = write_yaml(tmp_path / f"{cfg['name']}.yaml", cfg)
        runs[cfg["name"]] = R.load_run(imp.run_experiment(imp.load_config(path), tmp_path / "runs", quiet()))
    assert RA.es_gd_pairs(runs) == [("pair_es", "pair_gd")]
    blocks, claims = RA.geometry_blocks(runs, tmp_path / "figs", connectivity=True, curvature=True)

    # the reference barrier of the GD tickets of seeds 0 and 1 at level 0: test error along θ0 → θ1
    data = classification.load_dataset("digits", classes=[0, 1, 2, 3, 4])
    run = runs["pair_gd"]
    a, b = (run.level(s, "magnitude", 0).final_params for s in (0, 1))
    alphas = np.linspace(0.0, 1.0, 21)
    errs = []
    for al in alphas:
        theta = jax.tree_util.tree_map(lambda u, v, al=al: (1 - al) * u + al * v, a, b)
        pred = np.argmax(np.asarray(networks.apply(run.module(), theta, data.x_test)), axis=-1)
        errs.append(float(np.mean(pred != data.y_test)))
    errs = np.asarray(errs)
    want = float(np.max(errs - ((1 - alphas) * errs[0] + alphas * errs[-1])))
    cells = [r for blk in blocks if blk.kind == "table" for r in blk.rows]
    rows = [r for r in cells if r[:3] == ("pair_gd", "magnitude", "0")]
    assert len(rows) == 1 and abs(float(rows[0][4]) - want) <= 5e-5  # one pair: the value, 4 decimals
    assert "seed barrier at level 0: ES" in claims["seed_barrier"]
    assert "loss rise dense ES" in claims["flatness"]
    figs = [blk for blk in blocks if blk.kind == "figure"]
    assert len(figs) == 1 and figs[0].path.is_file()
    rise_rows = [
        r for blk in blocks if blk.kind == "table" for r in blk.rows if " L" in r[0] and "%)" in r[0]
    ]
    assert len(rise_rows) == 2  # ES snr and GD magnitude at the first = last level
