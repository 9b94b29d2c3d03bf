"""`rehyat launch` and `rehyat dist-check` end to end on the CPU (issue 7).

Three ranks rendezvous and pass a barrier; a rank that dies makes the launcher stop the
others and name it; a hung rank makes the others fail within the timeout naming it; ranks
started without the launcher name a killed peer themselves; SIGINT reaches every rank; no
rank outlives the launcher. dist-check runs with --no-nccl so that the same tests hold on
GPU machines (the NCCL path is checked by hand there, see the README). The binary comes
from $REHYAT_BIN (set by ctest).
"""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

DIST_VARIABLES = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "CUDA_VISIBLE_DEVICES", "REHYAT_RENDEZVOUS_FILE", "REHYAT_DIST_TIMEOUT", "OMPI_COMM_WORLD_RANK",
                  "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env["REHYAT_DIST_TIMEOUT"] = "20"  # no test may hang for long
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch(rehyat_bin, gpus, *check_args, env=None, timeout=60):
    args = [rehyat_bin, "launch", "--gpus", str(gpus), "--grace", "2", "--", "dist-check", "--no-nccl",
            *map(str, check_args)]
    start = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env or clean_env())
    return result, time.monotonic() - start


def rank_pids(stderr):
    """The children's pids from the launcher's first line."""
    pids = [int(p) for p in re.findall(r"rank \d+ pid (\d+)", stderr)]
    assert pids, stderr
    return pids


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


def assert_none_left(pids):
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], f"ranks left behind: {pids}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_three_ranks_pass_the_check(rehyat_bin):
    result, _ = launch(rehyat_bin, 3)
    assert result.returncode == 0, result.stderr
    for rank in range(3):
        line = rf"^\[rank {rank}\] rank {rank}/3: ok \(env, local rank {rank}, host \S+, CUDA_VISIBLE_DEVICES={rank};"
        assert re.search(line, result.stdout, re.M), result.stdout
    assert "rehyat launch: all 3 ranks finished" in result.stderr
    assert_none_left(rank_pids(result.stderr))


def test_a_dying_rank_stops_the_others(rehyat_bin):
    result, seconds = launch(rehyat_bin, 3, "--die-rank", 1)
    assert result.returncode != 0
    assert seconds < 10, seconds
    assert "rank 1 failed first (exit status 1)" in result.stderr, result.stderr
    assert "[rank 1] rank 1: --die-rank" in result.stderr
    assert "ok" not in result.stdout
    assert_none_left(rank_pids(result.stderr))


def test_a_killed_rank_is_named(rehyat_bin):
    result, seconds = launch(rehyat_bin, 3, "--die-rank", 2, "--die-signal")
    assert result.returncode != 0
    assert seconds < 10, seconds
    assert "rank 2 failed first (killed by SIGKILL)" in result.stderr, result.stderr
    assert_none_left(rank_pids(result.stderr))


def test_a_hung_rank_times_the_others_out(rehyat_bin):
    result, seconds = launch(rehyat_bin, 3, "--hang-rank", 2, "--timeout", 3)
    assert result.returncode != 0
    assert 3 <= seconds < 3 + 7, seconds
    # The waiting ranks name the timeout and the rank that never arrived...
    assert re.search(r"\[rank [01]\] rehyat: error: rank [01]: .* within 3 s: rank 2 did not arrive", result.stderr), \
        result.stderr
    # ...the launcher names the first of them to fail, and stopped the hung one.
    assert re.search(r"rank [01] failed first \(exit status 1\)", result.stderr), result.stderr
    assert re.search(r"rank 2: killed by SIGTERM \(stopped\)", result.stderr), result.stderr
    assert_none_left(rank_pids(result.stderr))


def test_ranks_without_the_launcher_name_a_killed_peer(rehyat_bin):
    port = free_port()
    procs = []
    for rank in range(3):
        env = clean_env(RANK=rank, WORLD_SIZE=3, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([rehyat_bin, "dist-check", "--no-nccl", "--die-rank", "1", "--die-signal"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    start = time.monotonic()
    outputs = [p.communicate(timeout=30) for p in procs]
    assert time.monotonic() - start < 10
    assert procs[1].returncode == -signal.SIGKILL
    for rank in (0, 2):
        assert procs[rank].returncode == 1, outputs[rank]
        assert f"rehyat: error: rank {rank}: " in outputs[rank][1]
        assert "rank 1 went away" in outputs[rank][1], outputs[rank][1]


def test_sigint_reaches_every_rank(rehyat_bin):
    proc = subprocess.Popen([rehyat_bin, "launch", "--gpus", "2", "--grace", "2", "--", "dist-check", "--no-nccl",
                             "--hang-rank", "0", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10
    assert proc.returncode != 0
    assert "interrupted by SIGINT" in stderr, stderr
    assert_none_left(rank_pids(stderr))


def test_cuda_visible_devices_are_split(rehyat_bin):
    result, _ = launch(rehyat_bin, 2, env=clean_env(CUDA_VISIBLE_DEVICES="5,7,9"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\[rank 1\] rank 1/2: ok .*CUDA_VISIBLE_DEVICES=7;", result.stdout, re.M), result.stdout
    result, _ = launch(rehyat_bin, 2, env=clean_env(CUDA_VISIBLE_DEVICES="3"))
    assert result.returncode != 0
    assert "CUDA_VISIBLE_DEVICES=3 lists 1 devices, fewer than --gpus 2" in result.stderr, result.stderr


def test_file_rendezvous(rehyat_bin, tmp_path):
    path = tmp_path / "rendezvous"
    result, _ = launch(rehyat_bin, 2, env=clean_env(REHYAT_RENDEZVOUS_FILE=path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == 2
    assert not path.exists()  # rank 0 removed it


def test_one_process_needs_no_launcher(rehyat_bin):
    result = subprocess.run([rehyat_bin, "dist-check", "--no-nccl"], capture_output=True, text=True, timeout=30,
                            env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rank 0/1: ok (none, local rank 0")


def test_usage_errors(rehyat_bin):
    def run(*args, **env):
        return subprocess.run([rehyat_bin, *map(str, args)], capture_output=True, text=True, timeout=30,
                              env=clean_env(**env))
    result = run("launch", "--gpus", 0, "--", "dist-check")
    assert result.returncode != 0 and "--gpus must be at least 1" in result.stderr
    assert run("launch", "--gpus", 2).returncode != 0  # no command
    result = run("dist-check", RANK=1, WORLD_SIZE=2)
    assert result.returncode != 0 and "MASTER_ADDR" in result.stderr, result.stderr
    result = run("bench", "nccl")
    assert result.returncode != 0
    assert "without NCCL" in result.stderr or "rank 0 of 1" in result.stderr, result.stderr
