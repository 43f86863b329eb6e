"""The launcher (loom/distributed/launch.py): torchrun's environment, output passed through with rank
prefixes, and a world that fails, hangs or is interrupted reported by rank and fully terminated."""
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from loom.distributed.launch import free_port, launch_env, run_ranks, spawn
from loom.errors import DistributedError

HERE = Path(__file__).parent
RANKS_MAIN = str(HERE / "ranks_main.py")


def _gone(pid_dir: Path, ranks: list[int]) -> bool:
    """Whether the processes whose pids ranks_main wrote for `ranks` no longer exist."""
    for rank in ranks:
        try:
            os.kill(int((pid_dir / f"{rank}.pid").read_text()), 0)
            return False
        except ProcessLookupError:
            pass
    return True


def test_free_port_and_launch_env():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert launch_env(2, 4, 0, "10.0.0.1", 29500) == {
        "RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert launch_env(1, 4, 1, "h", 1, local_world_size=2)["LOCAL_WORLD_SIZE"] == "2"
    with pytest.raises(ValueError, match="rank 4 is not in a world of size 4"):
        launch_env(4, 4, 0, "h", 1)


def test_spawn_runs_every_rank_and_prefixes_their_output(capfd):
    codes = spawn([sys.executable, RANKS_MAIN, "env"], 3, env={"LOOM_TEST_EXTRA": "yes"}, timeout=30.0)
    assert codes == [0, 0, 0]
    out, err = capfd.readouterr()
    assert "hello from rank 0 of 3" in out.splitlines()  # rank 0 writes straight through
    assert "[rank 1] hello from rank 1 of 3" in out and "[rank 2] hello from rank 2 of 3" in out
    assert "[rank 1] err line 1" in err and "err line 0" in err.splitlines()


def test_run_ranks_runs_a_module():
    assert run_ranks("ranks_main", 2, ["env"], env={"PYTHONPATH": str(HERE)}, timeout=30.0) == [0, 0]


def test_a_failing_rank_is_named_and_the_others_terminated(tmp_path):
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 1 exited with code 3 \(running .*ranks_main.py fail") as info:
        spawn([sys.executable, RANKS_MAIN, "fail", str(tmp_path)], 3, grace=0.5, timeout=30.0)
    assert "ranks [0, 2] were still running after 0.5 s of grace and were terminated" in str(info.value)
    assert time.monotonic() - start < 10.0
    assert _gone(tmp_path, [0, 2])


def test_a_hung_rank_is_caught_by_the_timeout(tmp_path):
    with pytest.raises(DistributedError, match=r"timed out after 1.5 s .*: ranks \[2\] were still running"):
        spawn([sys.executable, RANKS_MAIN, "hang", str(tmp_path)], 3, timeout=1.5)
    assert _gone(tmp_path, [2])


def test_a_rank_killed_by_a_signal_is_named():
    with pytest.raises(DistributedError, match="rank 1 was killed by signal SIGKILL"):
        spawn([sys.executable, RANKS_MAIN, "sigkill"], 2, grace=0.2, timeout=30.0)


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
                    reason="SIGINT is ignored in this process (a non-interactive shell started it in the "
                           "background): Ctrl-C cannot reach it")
def test_keyboard_interrupt_terminates_every_rank(tmp_path):
    def interrupt():
        """Ctrl-C once both ranks run: the launcher is then watching them."""
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"{r}.pid").exists() for r in (0, 1)) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
    sender = threading.Thread(target=interrupt, daemon=True)
    sender.start()
    with pytest.raises(KeyboardInterrupt):
        spawn([sys.executable, RANKS_MAIN, "hang", str(tmp_path)], 2, timeout=30.0)
    sender.join(5)
    assert _gone(tmp_path, [0, 1])


def test_a_command_that_cannot_start():
    with pytest.raises(DistributedError, match="rank 0: cannot start /nonexistent/loom-rank"):
        spawn(["/nonexistent/loom-rank"], 2)
    with pytest.raises(ValueError, match="nprocs must be at least 1"):
        spawn([sys.executable, "-c", "pass"], 0)
