import pytest
import torch
from conftest import requires_fmnist
from helpers import save_tiny
from typer.testing import CliRunner

import robench
from robench import __version__
from robench.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version_and_help_list_every_command():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"robench {__version__}"
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("models", "activations", "info"):
        assert cmd in r.output


def test_models_and_activations_tables():
    r = invoke("models")
    assert r.exit_code == 0 and "wrn-D-W" in r.output and "preact_resnet18" in r.output
    r = invoke("activations")
    assert r.exit_code == 0
    for name in ("splash", "pssilu", "psoftplus", "prelu", "apl", "swish"):
        assert name in r.output


def test_info_on_a_saved_checkpoint(tmp_path):
    save_tiny(tmp_path / "m.safetensors", "splash", name="tiny-splash")
    r = invoke("info", tmp_path / "m.safetensors")
    assert r.exit_code == 0, r.output
    assert "tiny-splash" in r.output and "lenet5" in r.output and "slopes_pos=[1, 0, 0, 0]" in r.output


def test_user_errors_are_one_sentence_with_exit_code_2(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    for args in (["info", tmp_path / "missing.pt"], ["info", tmp_path / "evil.pt"]):
        r = invoke(*args)
        assert r.exit_code == 2
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert r.output.startswith("Error: ")
    assert not (tmp_path / "PWNED").exists()


def test_help_shows_every_default_and_the_shared_options_alike():
    """Defaults written as [default: ...] reach the reader (they are not read as markup), and an option
    shared by several commands reads the same in each."""
    helps = {cmd: " ".join(invoke(cmd, "--help").output.split()) for cmd in ("eval", "transfer", "sanity")}
    assert "[default: 1000]" in helps["eval"] and "[default: Linf]" in helps["eval"]
    assert "[[run]] tables" in helps["eval"]
    line = "--norm <str> Linf or L2 [default: Linf]."
    assert all(line in h for h in helps.values())
    assert all(
        "--store <path> Results store [default: $ROBENCH_STORE or results/robench.sqlite]." in h for h in helps.values()
    )


def test_help_is_fast_offers_completion_and_shows_values_only_where_an_option_takes_one():
    """`--help` of every command renders without importing torch (what made it take 6-9 s), shell completion
    is offered, flags show no value placeholder and repeated options name what they take."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom robench.cli import app\n"
        "for cmd in ('eval', 'transfer', 'sanity', 'train', 'leaderboard', 'check', 'info', 'export', 'import'):\n"
        "    try:\n        app([cmd, '--help'])\n    except SystemExit:\n        pass\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("torch not imported"), r.stderr[-500:]
    assert "--install-completion" in invoke("--help").output
    helps = " ".join(invoke("eval", "--help").output.split())
    assert "--force Recompute" in helps and "<bool>" not in helps  # a flag takes no value
    assert "--eps EPS" in helps and "--attack SPEC" in helps and "list[str]" not in helps
    import robench as rb

    assert rb.evaluate.__name__ == "evaluate"  # the lazily imported public API is still there


def test_ctrl_c_while_the_arguments_are_parsed_says_so(monkeypatch, tmp_path):
    # Ctrl-C can land before robench's command runs (typer is still converting the arguments); it must still
    # end in the one sentence, not in a silent exit code 130
    import typer.core

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    from robench import cli_output

    cli_output.WHERE["ended"] = 1  # an earlier command in this process finished a run: not this command's
    monkeypatch.setattr(typer.core.TyperGroup, "parse_args", interrupt)
    res = runner.invoke(app, ["eval", str(tmp_path / "m.pt"), "--store", str(tmp_path / "s.sqlite")])
    assert res.exit_code == 130
    assert "Interrupted before any run started, so nothing was stored" in res.output
    assert not (tmp_path / "s.sqlite").exists()


@requires_fmnist
def test_the_python_api_takes_one_eps_or_one_attack_on_its_own(tmp_path):
    m = tmp_path / "m.pt"
    save_tiny(m)
    df = robench.evaluate(
        str(m), dataset="fashion-mnist", n=8, eps="0.1", attacks="fgsm", store=tmp_path / "s.sqlite", device="cpu"
    )
    assert df.eps.tolist() == ["0.1"] and df.attacks.tolist() == ["fgsm"]
    df = robench.evaluate(str(m), dataset="fashion-mnist", n=8, eps=0.05, store=tmp_path / "s.sqlite", device="cpu")
    assert df.eps.tolist() == ["0.05"]


def test_the_stop_message_names_only_the_runs_stopped_part_way():
    """A Ctrl-C during a transfer matrix, whose runs close only after the whole matrix, names the run being
    scored, not the runs whose every example is already stored."""
    from robench.cli_output import WHERE, interrupted, track

    WHERE.clear()
    for ev in (
        {"event": "start", "run_id": 1, "model": "a", "done": 0, "total": 10, "store": "s.sqlite"},
        {"event": "batch", "run_id": 1, "model": "a", "done": 10, "total": 10, "store": "s.sqlite"},
    ):
        track(ev)
    assert interrupted().startswith("Interrupted between runs; every finished run is saved")
    track({"event": "start", "run_id": 2, "model": "b", "done": 0, "total": 10, "store": "s.sqlite"})
    track({"event": "batch", "run_id": 2, "model": "b", "done": 5, "total": 10, "store": "s.sqlite"})
    msg = interrupted()
    assert "b stopped at 5 of 10 examples (run 2)" in msg and "run 1" not in msg, msg
    WHERE.clear()


def test_progress_of_a_clean_only_run_says_clean_not_robust():
    from robench.cli_output import headline
    from robench.cli_progress import EvalProgress

    assert headline({"attacks": "none", "clean_acc": 81.1, "robust_acc": 81.1, "eps": "0.1"}) == "clean 81.1%"
    assert (
        headline({"attacks": "pgd", "clean_acc": 81.1, "robust_acc": 70.0, "eps": "0.1"}) == "robust 70.0% at eps 0.1"
    )
    with EvalProgress(plain=False) as prog:
        for attacks, word in ((["none"], "clean"), (["pgd"], "robust")):
            rid = len(prog.tasks) + 1
            prog.update(
                {
                    "event": "start",
                    "run_id": rid,
                    "model": "m",
                    "attacks": attacks,
                    "total": 4,
                    "done": 0,
                    "cached": False,
                    "resumed": False,
                }
            )
            prog.update({"event": "batch", "run_id": rid, "done": 4, "robust": 3})
            assert prog.progress.tasks[-1].fields["robust"] == f"{word} 75.0%"  # in %, as the end result reads


def test_progress_moves_inside_a_batch_and_a_resume_counts_what_was_stored(tmp_path):
    """A fake slow cascade (two stages, each reporting itself) through robench.evaluate: the progress events
    say which stage runs on how many examples before the batch ends, the display shows the stage, the time
    elapsed and robench's own ETA, a resumed run shows the robust count of its stored batches, and Ctrl-C
    names the stage that was running."""
    import time

    from helpers import write_mnist_like

    from robench.attacks.base import Attack, AttackOutput, report_stage
    from robench.attacks.registry import ATTACKS
    from robench.cli_output import WHERE, interrupted
    from robench.cli_progress import EvalProgress

    if "slow-cascade" not in ATTACKS:

        @ATTACKS.register("slow-cascade")
        class SlowCascade(Attack):
            name = "slow-cascade"

            def budget(self):
                return {"name": self.name, "stages": 2}

            def run(self, model, x, y, idx, eps, norm, seed):
                for stage in ("first", "second"):
                    report_stage(f"slow-cascade: {stage}", len(x), len(x))
                    time.sleep(0.05)
                return AttackOutput(x.clone())

    class Oracle(torch.nn.Module):  # reads the synthetic data's class off its bright row block: always right
        def forward(self, x):
            return torch.stack([x[:, 0, 2 * k + 4 : 2 * k + 6].mean((1, 2)) for k in range(10)], 1)

    write_mnist_like(tmp_path / "fm", n_test=20)
    model = {"oracle": Oracle()}
    events = []
    kw = dict(
        dataset="fashion-mnist",
        data_dir=tmp_path / "fm",
        eps="0.1",
        attacks="slow-cascade",
        store=tmp_path / "s.sqlite",
        batch_size=5,
        device="cpu",
    )
    robench.evaluate(model, n=10, progress=events.append, **kw)
    kinds = [(e["event"], e.get("stage")) for e in events]
    assert kinds[:5] == [
        ("start", None),
        ("stage", "slow-cascade"),
        ("stage", "slow-cascade: first"),
        ("stage", "slow-cascade: second"),
        ("batch", None),
    ]
    assert [e["robust"] for e in events if e["event"] == "stage"][:3] == [5, 5, 5]
    WHERE.clear()
    with EvalProgress(plain=False) as prog:
        for e in events:
            prog.update(e)
            fields = prog.progress.tasks[-1].fields
            if e["event"] == "stage":
                assert fields["stage"] == f"{e['stage']} on {e['robust']} of {e['attacked']}"
                assert interrupted().count("during " + e["stage"]) == 1  # Ctrl-C now would name it
            if e["event"] == "batch" and e["done"] < e["total"]:
                assert fields["eta"].startswith("ETA 0:00:")

    # a run stopped in its second batch resumes after the stored first: its progress starts from that
    # batch's robust count, not "-"
    def stop_in_second_batch(e):
        if e["event"] == "stage" and e["done"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        robench.evaluate(model, n=20, progress=stop_in_second_batch, **kw)
    events.clear()
    robench.evaluate(model, n=20, progress=events.append, **kw)
    start = next(e for e in events if e["event"] == "start")
    robust = 5
    assert start["done"] == 5 and start["robust"] == robust
    with EvalProgress(plain=False) as prog:
        prog.update({**start, "cached": False, "resumed": True})
        assert prog.progress.tasks[-1].fields["robust"] == f"robust {100 * robust / 5:.1f}%"
    WHERE.clear()


def test_in_a_log_progress_is_plain_lines_at_least_every_few_seconds(monkeypatch, capsys):
    """Output that is not a terminal (CI) gets plain lines: a run's start, its state after batches and,
    in the middle of a long batch, the stage running, without waiting for the batch to end; then its end.
    Mid-run accuracy is in %, as the end result reads."""
    import time

    from robench import cli_progress
    from robench.cli_output import WHERE
    from robench.cli_progress import EvalProgress

    monkeypatch.setattr(cli_progress, "PLAIN_EVERY", 0.3)
    start = {"event": "start", "run_id": 1, "model": "m", "attacks": ["pgd"], "total": 8, "done": 0}
    with EvalProgress(plain=True) as prog:
        prog.update({**start, "cached": False, "resumed": False})
        time.sleep(0.2)
        prog.update({"event": "batch", "run_id": 1, "done": 4, "total": 8, "robust": 3})
        prog.update({"event": "stage", "run_id": 1, "stage": "autoattack: square", "robust": 3, "attacked": 4})
        time.sleep(1.5)  # a long batch: the display speaks on its own
        row = {"model": "m", "attacks": "pgd", "n": 8, "clean_acc": 87.5, "robust_acc": 62.5, "eps": "0.1"}
        prog.update({"event": "end", "run_id": 1, "rows": [row]})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "m: pgd: started, 0 of 8 examples done"
    assert any(x.startswith("m: pgd: 4/8 examples, robust 75.0%") for x in lines), lines
    assert any("robust 75.0%, autoattack: square on 3 of 4" in x for x in lines), lines
    assert lines[-1].startswith("m: pgd: 8/8 examples, robust 62.5% at eps 0.1"), lines
    WHERE.clear()


def test_a_stopped_check_says_its_re_evaluation_is_not_kept():
    """check runs in a temporary store, deleted as it stops: Ctrl-C must not promise a resume there, and a
    stop during PGD does not speak of AutoAttack members."""
    from robench.cli_output import WHERE, interrupted, track

    WHERE.clear()
    track({"event": "start", "run_id": 1, "model": "m", "store": "/tmp/x/check.sqlite", "done": 0, "total": 500})
    track({"event": "stage", "run_id": 1, "stage": "pgd"})
    msg = interrupted()
    assert "AutoAttack" not in msg and "during pgd: that batch reruns" in msg
    WHERE["discarded"] = "robench check"
    msg = interrupted()
    assert "check.sqlite" not in msg and "continue" not in msg, msg
    assert msg == (
        "Interrupted: m at 0 of 500 examples, during pgd. robench check keeps nothing of a stopped "
        "re-evaluation (it runs in a temporary store), so the same command starts it over."
    )
    WHERE.clear()


def test_the_command_line_shows_the_defaults_the_library_holds():
    """Each default is written once, in the settings object, and the command line reads it from there: its
    typed defaults (train, check, sanity) and the "[default: X]" of eval's help (whose options stay unset
    so that a suite file's value stands)."""
    import dataclasses

    import typer.main

    from robench.config import CheckConfig, EvalConfig, SanityConfig, TrainConfig

    commands = typer.main.get_command(app).commands

    def defaults(name):
        return {p.name: p.default for p in commands[name].params}

    for command, cls in (("train", TrainConfig), ("check", CheckConfig), ("sanity", SanityConfig)):
        shown = defaults(command)
        shared = [f for f in dataclasses.fields(cls) if f.name in shown and shown[f.name] is not None]
        assert len(shared) >= 3, command
        for f in shared:
            assert shown[f.name] == f.default, (command, f.name)
    helps = {p.name: p.help for p in commands["eval"].params}
    for name in ("n", "seed", "norm", "batch_size", "pgd_steps", "pgd_restarts", "pgd_loss", "jobs"):
        assert f"[default: {EvalConfig.__dataclass_fields__[name].default}]" in helps[name], name
