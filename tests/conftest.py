import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in two worker processes (pytest-xdist): one torch thread each, as two on two
    # cores would fight over them, and the tables drawn at robench's own width, not at the terminal's that
    # xdist hands its workers in COLUMNS. Set before torch and robench are imported, and inherited by the
    # commands the tests start.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.pop("COLUMNS", None)

import pytest  # noqa: E402
import torch  # noqa: E402

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fmnist_available() -> bool:
    return (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


# A test on the real embedded dataset. It must be there in CI (`make install` installs it); elsewhere such
# tests skip. They are slow, as are the modules and tests named below: `make quick` (pytest -m "not slow")
# leaves them out, `make test` and CI run everything.
requires_fmnist = pytest.mark.real_data
SLOW_MODULES = {
    "test_sanity",  # the checklist's attack runs, on planted masked models and on shipped checkpoints
    "test_zoo",  # every shipped checkpoint on the real test set
    "test_reliability",  # kills, concurrent evaluations, byte-identical reruns
    "test_site",  # the web leaderboard in headless Chromium
    "test_distributed",  # torchrun processes
}
SLOW_TESTS = {
    "test_the_committed_leaderboard_is_what_the_committed_results_give",  # the whole archive imported and rendered
    "test_autoattack_equals_a_direct_pyautoattack_run",
    "test_autoattack_checks_become_flags",
    "test_autoattack_rows_are_rechecked_with_fast_unless_told_official",
    "test_sigterm_stops_the_workers_and_says_where_the_run_stopped",
    "test_every_method_trains_and_records_its_recipe",
    "test_training_is_deterministic_for_a_seed",
    "test_the_headline_eps_comes_first_and_alone_unfolded",  # AutoAttack runs at four eps
}


def pytest_collection_modifyitems(config, items):
    missing = not fmnist_available() and not os.environ.get("CI")
    for item in items:
        real = item.get_closest_marker("real_data") is not None
        if real and missing:
            item.add_marker(
                pytest.mark.skip(reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
            )
        module = item.module.__name__.rpartition(".")[2]
        if real or module in SLOW_MODULES or "trained" in item.fixturenames or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    """Each test: its own cwd (so ./data and ./results are empty), no inherited robench settings."""
    monkeypatch.chdir(tmp_path)
    for var in ("ROBENCH_DATA", "ROBENCH_STORE", "ROBENCH_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A LeNet5 trained briefly on the real Fashion-MNIST, saved as a robench checkpoint."""
    if not fmnist_available():
        pytest.skip("Fashion-MNIST is not installed") if not os.environ.get("CI") else None
    from helpers import train_fmnist

    path = tmp_path_factory.mktemp("zoo") / "lenet5-relu.pt"
    train_fmnist(path)
    return path
