"""The workflow's job server (l2c/jobserver.py): a job forwarded to it runs in a forked child with the
job's own output files, working directory, environment and exit status; a job it cannot serve runs
in its own process; a killed job kills its child; the server stops with its parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from l2c import jobserver

REPO = Path(__file__).resolve().parents[1]
CLIENT = "import sys; from l2c.jobserver import forward; code = forward(sys.argv[1], sys.argv[2]); print('LOCAL' if code is None else f'CODE {code}'); sys.exit(0 if code is None else code)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc, path = jobserver.start(log, REPO)
    deadline = time.monotonic() + 120
    while "serving" not in log.read_text() and time.monotonic() < deadline:  # preloading torch and the package
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    yield proc, path, log
    jobserver.stop(proc, path)
    assert proc.poll() is not None and not os.path.exists(path)


def client(path: str | None, kind: str, target: str, cwd: Path, extra_env: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, **(extra_env or {})}
    env.pop(jobserver.IN_CHILD, None)
    if path is None:
        env.pop(jobserver.ENV, None)
    else:
        env[jobserver.ENV] = path
    out = open(cwd / "out.log", "w")
    return subprocess.Popen([sys.executable, "-c", CLIENT, kind, target], cwd=cwd, env=env, stdout=out,
                            stderr=subprocess.STDOUT, **kw)


def test_a_forwarded_script_runs_in_a_child_with_the_jobs_streams_cwd_env_and_status(server, tmp_path):
    proc, path, _ = server
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import os, sys, torch
        print("stdout line", os.getpid(), os.getppid(), os.getcwd(), os.environ["JOB_VALUE"], torch.get_num_threads())
        print("stderr line", file=sys.stderr)
        os.write(1, b"C-level write\\n")
        sys.exit(3)
    """))
    c = client(path, "script", str(script), tmp_path, {"JOB_VALUE": "seven", "OMP_NUM_THREADS": "1"})
    assert c.wait(timeout=120) == 3
    out = (tmp_path / "out.log").read_text()
    assert "CODE 3" in out and "stderr line" in out and "C-level write" in out
    words = next(line for line in out.splitlines() if line.startswith("stdout line")).split()
    pid, ppid, cwd, value, threads = int(words[2]), int(words[3]), words[4], words[5], int(words[6])
    assert ppid == proc.pid and pid not in (proc.pid, c.pid)  # forked from the server, not the client
    assert (cwd, value, threads) == (str(tmp_path), "seven", 1)
    assert "[l2c job server] child" in out and "max RSS" in out


def test_a_served_child_has_the_compiler_imported_and_compiles(server, tmp_path):
    """The server imports inductor's compiler once (jobs on the compiled branches skip about 1 s of
    imports each); a child forked from it compiles and runs a function like a fresh process."""
    _, path, _ = server
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import sys
        preloaded = "torch._inductor.compile_fx" in sys.modules
        import torch
        f = torch.compile(lambda x: torch.nn.functional.gelu(x, approximate="tanh") * 2 + 1, dynamic=False)
        x = torch.randn(64, 32)
        print("RESULT", preloaded, torch.allclose(f(x), torch.nn.functional.gelu(x, approximate="tanh") * 2 + 1, atol=1e-6))
    """))
    c = client(path, "script", str(script), tmp_path, {"OMP_NUM_THREADS": "1"})
    assert c.wait(timeout=300) == 0, (tmp_path / "out.log").read_text()[-3000:]
    assert "RESULT True True" in (tmp_path / "out.log").read_text()


def test_a_job_that_raises_prints_its_traceback_and_fails(server, tmp_path):
    _, path, _ = server
    script = tmp_path / "bad.py"
    script.write_text("raise RuntimeError('the job failed here')\n")
    c = client(path, "script", str(script), tmp_path)
    assert c.wait(timeout=120) == 1
    out = (tmp_path / "out.log").read_text()
    assert "RuntimeError: the job failed here" in out and "Traceback" in out


def test_without_a_server_or_with_another_environment_the_job_runs_here(server, tmp_path):
    _, path, _ = server
    script = tmp_path / "job.py"
    script.write_text("print('ran')\n")
    for p, env in ((None, {}), (str(tmp_path / "no-such-socket"), {}), (path, {"PYTHONHASHSEED": "123"})):
        c = client(p, "script", str(script), tmp_path, env)
        assert c.wait(timeout=120) == 0
        out = (tmp_path / "out.log").read_text()
        assert out.strip() == "LOCAL", (p, env, out)


def test_killing_the_job_kills_its_child(server, tmp_path):
    _, path, _ = server
    script = tmp_path / "slow.py"
    script.write_text("import os, time\nopen('child.pid', 'w').write(str(os.getpid()))\ntime.sleep(300)\n")
    c = client(path, "script", str(script), tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "child.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int((tmp_path / "child.pid").read_text())
    c.send_signal(signal.SIGKILL)
    c.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child {pid} of a killed job still runs")


def test_the_cli_forwards_and_keeps_its_exit_codes(server, tmp_path):
    """``l2c`` as a program inside a run: a refused input still exits 2 with its one line."""
    _, path, _ = server
    env = {**os.environ, jobserver.ENV: path}
    env.pop(jobserver.IN_CHILD, None)
    r = subprocess.run([sys.executable, "-c", "import sys; from l2c.cli import main; sys.exit(main())", "macs", "--schedule", str(tmp_path / "missing.json")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "l2c macs: error: " in r.stderr and "[l2c job server] child" in r.stderr
