"""Fault injection (issue 19): concurrent runs into one directory, damaged checkpoints and files, Ctrl-C and
kills at seeded points, bad inputs. Each case checks the one-line message AND that nothing is lost: the
run finishes, after resuming, with exactly the numbers of an uninterrupted run (compared byte for byte
with a reference run in another directory)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from es_lottery import cli, treeio
from es_lottery.experiments import generations, imp, locks, nets, slt
from es_lottery.pruning import es_trainer

ROOT = Path(__file__).resolve().parents[1]

SLT_CFG = {
    "name": "fault_slt",
    "dataset": "moons",
    "dataset_args": {"n_train": 400, "n_test": 200},
    "networks": {"A": {"sizes": [2, 8, 2]}},
    "variants": ["ga"],
    "seeds": 2,
    "ga": {"population_size": 8, "min_generations": 8, "patience": 3},
    "progress_every": 2,
}
IMP_CFG = {
    "name": "fault_imp",
    "dataset": "digits",
    "network": {"name": "mlp", "sizes": [64, 8, 10]},
    "trainer": {
        "type": "es",
        "algorithm": "SNES",
        "population_size": 8,
        "sigma_init": 0.05,
        "num_generations": 8,
        "eval_every": 2,
        "batch_size": 64,
        "checkpoint_every": 2,
    },
    "imp": {"num_levels": 2, "prune_rate": 0.2},
    "criteria": ["magnitude"],
    "seeds": 1,
}
NETS_CFG = {
    "name": "fault_nets",
    "dataset": "xor",
    "dataset_args": {"n": 12},
    "network": {"name": "mlp", "sizes": [2, 4, 1], "weight_init": "lecun_normal"},
    "nets": {"population_size": 4, "generations": 6, "inner_batch_size": 8},
    "final_training": {"epochs": 2, "learning_rate": 0.1, "batch_size": 8},
    "methods": ["nets", "random"],
    "seeds": 2,
    "progress_every": 1,
}


class Killed(BaseException):  # not an Exception: nothing catches it, like a SIGKILL
    """Stands for a SIGKILL at a chosen point of a run."""


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200, soft_wrap=True)


def fingerprint(out: Path, name: str) -> dict:
    """What a run produced: the view's rows without wall-clock fields, and every array in the store
    (checkpoints excluded) by path, dtype, shape and bytes."""
    view = out / name
    rows = {}
    for f in ("results.jsonl", "metrics.jsonl"):
        rows[f] = [
            {k: v for k, v in r.items() if not k.endswith("seconds")} for r in treeio.read_jsonl(view / f)
        ]
    arrays = {}
    for f in sorted((out / "store").rglob("*.npz")):
        if "checkpoint" in f.relative_to(out).as_posix():
            continue
        a_map, _ = treeio.load_arrays(f)
        for k, a in sorted(a_map.items()):
            h = hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()
            arrays[f"{f.relative_to(out)}:{k}"] = h
    return {"rows": rows, "arrays": arrays}


def leftovers(out: Path) -> list[str]:
    """Temporary files and lock files left anywhere under ``out``."""
    return sorted(p.name for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == locks.LOCK_FILE)


def write_config(tmp: Path, cfg: dict) -> Path:
    path = tmp / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``es-lottery ARGV`` in this process: (exit status, what it printed)."""
    buf = io.StringIO()
    real = cli.Console
    cli.Console = lambda *a, **k: Console(file=buf, width=200, soft_wrap=True)
    try:
        code = cli.main(argv)
    finally:
        cli.Console = real
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict:
    """Uninterrupted runs of the three tiny configs (each in its own directory)."""
    out = {}
    for kind, mod, cfg in (("slt", slt, SLT_CFG), ("imp", imp, IMP_CFG), ("nets", nets, NETS_CFG)):
        d = tmp_path_factory.mktemp(f"ref_{kind}")
        mod.run_experiment(mod.parse_config(copy.deepcopy(cfg)), d, console=quiet())
        out[kind] = fingerprint(d, cfg["name"])
        assert out[kind]["rows"]["results.jsonl" if kind != "imp" else "metrics.jsonl"]
    return out


# ----------------------------------------------------------------------------------------------
# atomic writes and locks


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    path = tmp_path / "shared.json"
    errors = []

    def writer(i):
        try:
            for j in range(60):
                treeio.write_json(path, {"writer": i, "n": j, "pad": "x" * 5000})
        except BaseException as err:  # pragma: no cover - the failure being tested for
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    last = treeio.read_json(path)  # one whole file, from one writer
    assert last["n"] == 59 and last["pad"] == "x" * 5000
    assert leftovers(tmp_path) == []


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    treeio.write_json(path, {"v": 1})

    def boom(fh):
        fh.write('{"v": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        treeio.atomic_write(path, boom, mode="w")
    assert treeio.read_json(path) == {"v": 1} and leftovers(tmp_path) == []


def test_a_second_holder_waits_and_is_told_who_holds_the_lock(tmp_path):
    held, release, order = threading.Event(), threading.Event(), []

    def first():
        with locks.hold(tmp_path, "job X"):
            held.set()
            release.wait(10)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait(10)
    messages = []
    threading.Timer(0.5, release.set).start()
    with locks.hold(tmp_path, "job X", messages.append, poll=0.05):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    (msg,) = messages
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg
    assert "job X is being run by" in msg and str(tmp_path / locks.LOCK_FILE) in msg
    assert leftovers(tmp_path) == []


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = (
        "import sys, time; from es_lottery.experiments import locks\n"
        f"with locks.hold({str(tmp_path)!r}, 'job'):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    holder = json.loads((tmp_path / locks.LOCK_FILE).read_text())
    assert holder["pid"] == proc.pid and holder["host"] == socket.gethostname()
    proc.kill()
    proc.wait()
    assert (tmp_path / locks.LOCK_FILE).exists()  # left behind by the kill …
    messages = []
    t0 = time.time()
    with locks.hold(tmp_path, "job", messages.append):  # … and taken over at once
        assert json.loads((tmp_path / locks.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert messages == [] and time.time() - t0 < 5


def test_a_finished_seed_is_never_recorded_twice(tmp_path):
    (job,) = [j for j in slt.plan(slt.parse_config(SLT_CFG), tmp_path) if j.name == "A/ga"]
    assert job.branch.finish_seed(0, {"seed": 0, "test_acc": 0.5}, [{"generation": 1}])
    assert not job.branch.finish_seed(0, {"seed": 0, "test_acc": 0.9}, [{"generation": 1}, {"generation": 2}])
    assert job.branch.result(0)["test_acc"] == 0.5 and len(job.branch.metrics(0)) == 1


# ----------------------------------------------------------------------------------------------
# two runs into one directory


@pytest.mark.slow
def test_two_concurrent_runs_into_one_directory_give_the_results_of_one(tmp_path, references):
    cfg = write_config(tmp_path, SLT_CFG)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "es_lottery.cli", "slt", str(cfg), "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert all("Traceback" not in log for log in logs)
    assert fingerprint(out, SLT_CFG["name"]) == references["slt"]
    summary = json.loads((out / SLT_CFG["name"] / "summary.json").read_text())
    assert summary["jobs"]["A/ga"]["seeds"] == SLT_CFG["seeds"]  # not doubled
    assert leftovers(out) == []


# ----------------------------------------------------------------------------------------------
# damaged checkpoints


def damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))


@pytest.mark.slow  # its reference runs take minutes; the imp case below stays in the default suite
@pytest.mark.parametrize("kind", ["truncated", "empty", "random"])
def test_a_damaged_slt_checkpoint_is_reported_deleted_and_the_job_rerun(tmp_path, references, kind):
    exp = slt.parse_config(SLT_CFG)
    real_save, saved = generations.save_tree, []

    def save_then_die(path, tree, meta):
        real_save(path, tree, meta)
        saved.append(path)
        if len(saved) == 2:
            raise Killed

    generations.save_tree = save_then_die
    try:
        with pytest.raises(Killed):
            slt.run_experiment(exp, tmp_path, console=quiet(), checkpoint_seconds=0)
    finally:
        generations.save_tree = real_save
    ckpt = saved[-1]
    damage(ckpt, kind)
    log = quiet()
    slt.run_experiment(exp, tmp_path, console=log)
    text = log.file.getvalue()
    line = next(ln for ln in text.splitlines() if "warning" in ln)
    assert str(ckpt) in line and "damaged or truncated" in line and "restarts from generation 0" in line
    assert "resuming" not in text and not ckpt.exists()
    assert fingerprint(tmp_path, exp.name) == references["slt"]


@pytest.mark.parametrize("kind", ["truncated", "empty", "random"])
def test_a_damaged_imp_checkpoint_restarts_its_level_and_keeps_finished_levels(tmp_path, references, kind):
    exp = imp.parse_config(IMP_CFG)
    seen = []

    def kill(info):
        seen.append(info)
        if (info["level"], info["generation"]) == (1, 4):
            raise Killed

    with pytest.raises(Killed):
        imp.run_experiment(exp, tmp_path, console=quiet(), on_segment=kill)
    chain = imp.data_dir(exp, tmp_path) / "seed_0" / "magnitude"
    ckpt = chain / "level_1" / "checkpoint" / es_trainer.NpzCheckpointer.FILE
    finished = (chain / "level_0" / "metrics.json").read_bytes()
    damage(ckpt, kind)
    log, resumed = quiet(), []
    imp.run_experiment(exp, tmp_path, console=log, on_segment=resumed.append)
    line = next(ln for ln in log.file.getvalue().splitlines() if "warning" in ln)
    assert str(ckpt) in line and "restarts from generation 0" in line
    assert [(r["level"], r["generation"]) for r in resumed] == [(1, g) for g in (2, 4, 6, 8)]
    assert (chain / "level_0" / "metrics.json").read_bytes() == finished  # the finished level is kept
    assert fingerprint(tmp_path, exp.name) == references["imp"]


def test_damaged_array_and_json_files_are_named(tmp_path):
    npz, js = tmp_path / "a.npz", tmp_path / "b.json"
    treeio.save_arrays(npz, {"x": np.arange(3)})
    damage(npz, "truncated")
    with pytest.raises(treeio.DamagedFile, match=f"{npz} is damaged or truncated"):
        treeio.load_arrays(npz)
    js.write_text('{"seed": 0, "test_')
    with pytest.raises(treeio.DamagedFile, match=f"{js} is damaged or truncated"):
        treeio.read_json(js)


# ----------------------------------------------------------------------------------------------
# Ctrl-C and kills at seeded points


def interruption_loop(run, out: Path, name: str, reference: dict, seed: int, needed: int = 10) -> int:
    """Run ``run()`` again and again, each time stopped at a seeded file write (before or after it) by a
    real SIGINT or by a kill, until ``needed`` interruptions happened; every run that gets to its end must
    give ``reference`` (a finished directory is then started afresh). Returns the interruptions."""
    rng = np.random.default_rng(seed)
    real = treeio.atomic_write
    done = 0
    finished = 0
    while done < needed or finished == 0:
        point, after = int(rng.integers(1, 6)), bool(rng.integers(2))
        how = "sigint" if rng.integers(2) else "kill"
        count = [0]

        def write(path, fn, mode="wb", point=point, after=after, how=how, count=count, armed=done < needed):
            count[0] += 1
            if count[0] != point or not armed:
                return real(path, fn, mode)
            if after:
                real(path, fn, mode)
            if how == "kill":
                raise Killed
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
            raise AssertionError("SIGINT was not delivered")

        treeio.atomic_write = write
        try:
            status = run()
        except (Killed, KeyboardInterrupt):
            status = "stopped"
        finally:
            treeio.atomic_write = real
        if status == 130 or status == "stopped":
            done += 1
            continue
        assert status == 0
        assert fingerprint(out, name) == reference, f"after {done} interruptions"
        assert leftovers(out) == []
        finished += 1
        if done < needed:
            import shutil

            shutil.rmtree(out)
    return done


@pytest.mark.slow
def test_slt_survives_ctrl_c_and_kills_at_seeded_points(tmp_path, references):
    cfg, out = write_config(tmp_path, SLT_CFG), tmp_path / "runs"
    messages = []

    def run():
        code, text = run_cli(["slt", str(cfg), "--out", str(out), "--checkpoint-seconds", "0"])
        if code == 130:
            messages.append(text.strip().splitlines()[-1])
            assert "Traceback" not in text
        return code

    assert interruption_loop(run, out, SLT_CFG["name"], references["slt"], seed=19) >= 10
    assert messages and set(messages) == {"interrupted; rerun the same command to resume"}


@pytest.mark.slow
def test_imp_survives_ctrl_c_and_kills_at_seeded_points(tmp_path, references):
    cfg, out = write_config(tmp_path, IMP_CFG), tmp_path / "runs"

    def run():
        code, text = run_cli(["imp", str(cfg), "--out", str(out)])
        assert code in (0, 130) and "Traceback" not in text, text
        return code

    assert interruption_loop(run, out, IMP_CFG["name"], references["imp"], seed=20) >= 10


@pytest.mark.slow
def test_nets_survives_ctrl_c_and_kills_at_seeded_points(tmp_path, references):
    exp, out = nets.parse_config(NETS_CFG), tmp_path / "runs"

    def run():
        nets.run_experiment(exp, out, console=quiet(), checkpoint_seconds=0)
        return 0

    assert interruption_loop(run, out, NETS_CFG["name"], references["nets"], seed=21) >= 10


@pytest.mark.slow
def test_a_real_sigkill_of_the_command_resumes_to_the_same_numbers(tmp_path, references):
    cfg, out = write_config(tmp_path, SLT_CFG), tmp_path / "runs"
    cmd = [sys.executable, "-m", "es_lottery.cli", "slt", str(cfg), "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--checkpoint-seconds", "0"], cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.rglob("checkpoints/*.npz")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fingerprint(out, SLT_CFG["name"]) == references["slt"]


def test_ctrl_c_from_the_command_line_prints_one_line_and_exits_130(tmp_path):
    cfg = write_config(tmp_path, {**SLT_CFG, "ga": {**SLT_CFG["ga"], "min_generations": 5000}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "es_lottery.cli", "slt", str(cfg), "--out", str(tmp_path / "runs")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list((tmp_path / "runs").rglob("job.json")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert stdout.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"


# ----------------------------------------------------------------------------------------------
# every everyday fault: one line naming the file or field, a non-zero status


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnetworks: {A: [2, 8\n")
    code, text = run_cli(["slt", str(bad), "--out", str(tmp_path / "runs")])
    assert code == 2 and "Traceback" not in text
    assert text.count("\n") == 1 and str(bad) in text and "not valid YAML" in text
    assert not (tmp_path / "runs").exists()


def test_out_that_is_a_file_or_not_writable_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    code, text = run_cli(["slt", "--out", str(afile)])
    assert code == 1 and text.count("\n") == 1 and f"--out {afile} is a file" in text
    code, text = run_cli(["slt", "--out", str(afile / "sub")])
    assert code == 1 and text.count("\n") == 1 and "is a file, not a directory" in text
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, text = run_cli(["slt", "--out", str(locked / "runs")])
    assert code == 1 and text.count("\n") == 1 and f"{locked} is not writable" in text


def test_truncated_gz_data_names_the_file(tmp_path):
    from es_lottery.tasks import classification

    path = tmp_path / "train-images-idx3-ubyte.gz"
    classification.write_idx(path, np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=f"{path} is damaged or truncated.*download it again"):
        classification.read_idx(path)


def test_a_damaged_result_file_is_named_by_the_cli(tmp_path):
    cfg = write_config(tmp_path, SLT_CFG)
    out = tmp_path / "runs"
    (job,) = slt.plan(slt.parse_config(SLT_CFG), out)
    job.branch.finish_seed(0, {"seed": 0, "test_acc": 0.5})
    job.branch.result_path(0).write_text('{"seed": 0, "te')
    code, text = run_cli(["slt", str(cfg), "--out", str(out)])
    assert code == 2 and "Traceback" not in text
    assert f"{job.branch.result_path(0)} is damaged or truncated" in text.splitlines()[-1]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"seeds": 2.7}, "seeds: expected an integer"),
        ({"seeds": "three"}, "seeds: expected an integer"),
        ({"backprop": "no"}, "backprop: expected true or false"),
        ({"backprop": 1}, "backprop: expected true or false"),
        ({"name": "../outside"}, "name: must be a plain directory name"),
        ({"name": "a/b"}, "name: must be a plain directory name"),
        ({"name": ".."}, "name: must be a plain directory name"),
    ],
)
def test_wrong_values_name_their_field_on_the_command_line(tmp_path, patch, field):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**SLT_CFG, **patch}))
    code, text = run_cli(["slt", str(path), "--out", str(tmp_path / "runs")])
    assert code == 2 and text.count("\n") == 1 and "Traceback" not in text
    assert f"{path}: {field}" in text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outside").exists()


def test_only_that_matches_no_job_is_an_error_and_creates_nothing(tmp_path):
    cfg = write_config(tmp_path, SLT_CFG)
    code, text = run_cli(["slt", str(cfg), "--out", str(tmp_path / "runs"), "--only", "Z/*"])
    assert code == 2 and "Traceback" not in text
    assert "--only Z/* matches none of the jobs of 'fault_slt': A/ga" in text
    assert not (tmp_path / "runs").exists()


def test_a_crash_never_exits_0(tmp_path, monkeypatch):
    def crash(*a, **k):
        raise RuntimeError("LLVM compilation error: Cannot allocate memory")

    monkeypatch.setattr(slt, "run_experiment", crash)
    code, text = run_cli(["slt", "--out", str(tmp_path / "runs")])
    assert code == 1
    assert "error: RuntimeError: LLVM compilation error: Cannot allocate memory" in text
    assert "rerun the same command to resume" in text


@pytest.mark.parametrize(
    "patch, expect",
    [
        ({"dataset": "mnist", "dataset_args": {"idx_dir": "/nonexistent"}}, "idx_dir /nonexistent"),
        ({"network": {"name": "mlp", "sizes": [64, 8, 3]}}, "network: the network has 3 outputs"),
        ({"network": {"name": "mlp", "sizes": [10, 8, 10]}}, "network: mlp takes inputs of shape (10,)"),
    ],
)
def test_imp_errors_found_before_the_store_is_touched(tmp_path, patch, expect):
    # data that cannot be found or do not fit the network: one line naming it, and no directory created
    cfg = write_config(tmp_path, {**IMP_CFG, **patch})
    code, text = run_cli(["imp", str(cfg), "--out", str(tmp_path / "runs")])
    assert code == 2 and text.count("\n") == 1 and "Traceback" not in text, text
    assert expect in text
    assert not (tmp_path / "runs").exists()
