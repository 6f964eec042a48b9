"""A fork server for the workflow's jobs: Python, torch and the package are imported once per run,
not once per job.

A local ``snakemake`` run starts one server (``Snakefile``, ``onstart``) and exports its socket in
``L2C_JOB_SERVER``. A job (a rule's script, or the ``l2c`` command) that finds the variable sends
its work to the server instead of running it: the server forks a child of its already-imported
self, the child takes over the job's standard output and error (the rule's log file), working
directory, environment and thread count, runs the job, and its exit status becomes the job's.
Anything the server cannot serve (no server, another interpreter or package checkout, a refused
connection) runs in the job's own process as before, so the same rules run unchanged on a cluster.

Design points:
- the server is single-threaded and never runs torch itself, so forking it is safe; each job is a
  fresh child of the pristine server (no state leaks from one job to the next);
- a job killed by Snakemake (its client closing the connection) kills its child's process group;
- the socket lives in a private directory (mode 0700) and peers of another user are refused;
- the server exits when its parent (Snakemake) is gone, or on SIGTERM once its running jobs end;
- the child's resource use (wall, CPU, peak memory) is appended to the job's log, since
  Snakemake's ``benchmark:`` files only see the client process.
"""
from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENV = "L2C_JOB_SERVER"
IN_CHILD = "_L2C_JOB_CHILD"  # set in a served child's environment: never forward again
# What jobs import ("module:attribute" for lazy modules, "module:function()" to call one). The last
# two serve the jobs that sample through the compiled branches: inductor's compiler (about 1 s to
# import) and its hash of torch's sources (a key of every compile-cache lookup); neither starts a
# thread or a process.
PRELOAD = ("torch", "numpy", "scipy.linalg", "snakemake.script", "l2c.cells", "l2c.cli", "l2c.metrics.evaluate",
           "l2c.caching", "l2c.rehearsal", "analysis.tables", "analysis.figures", "diffusers:AutoencoderKL",
           "torch._inductor.compile_fx", "torch._inductor.codecache:torch_key()")
_HEADER = struct.Struct("!I")


def _package_root() -> str:
    return str(Path(__file__).resolve().parent)


def _send(conn: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(obj)
    payload = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(conn, [payload], fds)
    else:
        conn.sendall(payload)


def _recv_exact(conn: socket.socket, n: int, first: bytes = b"") -> bytes:
    buf = bytearray(first)
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("job server connection closed")
        buf += chunk
    return bytes(buf)


def _recv(conn: socket.socket, with_fds: int = 0) -> tuple[Any, list[int]]:
    if with_fds:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, with_fds)
        if not data:
            raise ConnectionError("job server connection closed")
    else:
        data, fds = b"", []
    head = _recv_exact(conn, _HEADER.size, data[:_HEADER.size])
    (n,) = _HEADER.unpack(head)
    body = _recv_exact(conn, n, data[_HEADER.size:])
    return pickle.loads(body), list(fds)


# -- client ---------------------------------------------------------------------------------------------

def forward(kind: str, target: str) -> int | None:
    """Run a job in the server, if one serves this run: ``kind`` "script" (``target``: the path of
    the script Snakemake runs, preamble included) or "call" (``target``: "module:function", called
    without arguments; it reads ``sys.argv``). Returns the job's exit status, or None when the job
    must run in this process (no server, or one that refuses it)."""
    path = os.environ.get(ENV)
    if not path or os.environ.get(IN_CHILD):
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
    except OSError:
        return None
    with conn:
        request = {"kind": kind, "target": target, "cwd": os.getcwd(), "env": dict(os.environ),
                   "argv": list(sys.argv), "package": _package_root(), "executable": sys.executable,
                   "path": list(sys.path)}
        try:
            _send(conn, request, [0, 1, 2])
            reply, _ = _recv(conn)
        except (OSError, ConnectionError, pickle.PickleError):
            return None
        if reply.get("status") != "accepted":
            return None
        try:  # the child runs; its exit status arrives when it ends (Snakemake killing us kills it too)
            done, _ = _recv(conn)
        except ConnectionError:
            print("l2c job server: the server went away while running this job", file=sys.stderr)
            return 1
    usage = done["usage"]
    print(f"[l2c job server] child {done['pid']}: wall {usage['wall']:.1f} s, CPU {usage['cpu']:.1f} s, "
          f"max RSS {usage['maxrss_mb']:.0f} MB", file=sys.stderr)
    return int(done["code"])


def forward_script(script: str) -> None:
    """For a rule's script, first thing after its log is set up: run the script in the server and
    exit with its status; return (to run it here) when no server serves this job."""
    code = forward("script", script)
    if code is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# -- server ---------------------------------------------------------------------------------------------

def _refusal(request: dict) -> str | None:
    if request.get("executable") != sys.executable:
        return f"another interpreter ({request.get('executable')})"
    if request.get("package") != _package_root():
        return f"another l2c checkout ({request.get('package')})"
    for key in ("PYTHONPATH", "PYTHONHASHSEED", "LD_PRELOAD", "LD_LIBRARY_PATH"):
        if request["env"].get(key) != os.environ.get(key):
            return f"another {key}"
    return None


def _run_child(request: dict, fds: list[int]) -> int:
    """In the forked child: become the job, run it, return its exit status."""
    os.setpgid(0, 0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(ENV, None)
    os.environ[IN_CHILD] = "1"
    sys.argv = request["argv"]
    sys.path[:] = request["path"]
    import torch  # already imported by the server: thread counts are the job's, not the server's
    threads = request["env"].get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        torch.set_num_threads(int(threads))
    try:
        if request["kind"] == "script":
            import runpy
            runpy.run_path(request["target"], run_name="__main__")
            return 0
        module, name = request["target"].split(":")
        result = getattr(importlib.import_module(module), name)()
        return int(result or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the job's own traceback, in its log, as a plain run would print
        import traceback
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve(path: str, parent: int | None = None, preload: tuple[str, ...] = PRELOAD) -> None:
    """Serve jobs on the Unix socket ``path`` until stopped or until process ``parent`` is gone."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # bound before preloading: early jobs wait in the backlog, none runs twice
    listener.listen(128)
    for name in preload:  # what fails, the job does itself
        try:
            module, _, attr = name.partition(":")
            obj = importlib.import_module(module)
            if attr:
                obj = getattr(obj, attr.removesuffix("()"))
                if attr.endswith("()"):
                    obj()
        except Exception:  # noqa: BLE001
            pass
    print(f"l2c job server: serving {path} (pid {os.getpid()})", flush=True)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    running: dict[int, tuple[socket.socket, float]] = {}  # child pid -> (client connection, start)
    uid = os.getuid()
    while not stopping or running:
        if parent is not None and os.getppid() != parent:
            stopping = True
        watched = [listener] if not stopping else []
        watched += [conn for conn, _ in running.values()]
        try:
            ready, _, _ = select.select(watched, [], [], 0.05)
        except InterruptedError:
            ready = []
        for conn in ready:
            if conn is listener:
                _accept(listener, running, uid)
            else:  # a client closed its connection while its job runs: Snakemake killed the job
                pid = next(p for p, (c, _) in running.items() if c is conn)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while running:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            entry = running.pop(pid, None)
            if entry is None:
                continue
            conn, start = entry
            try:
                _send(conn, {"code": os.waitstatus_to_exitcode(status), "pid": pid,
                             "usage": {"wall": time.monotonic() - start, "cpu": usage.ru_utime + usage.ru_stime,
                                       "maxrss_mb": usage.ru_maxrss / 1024}})
            except OSError:
                pass
            conn.close()
        if stopping and running and parent is not None and os.getppid() != parent:
            for pid in running:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    listener.close()
    for remove, target in ((os.unlink, path), (os.rmdir, os.path.dirname(path))):  # the socket, then its folder if empty
        try:
            remove(target)
        except OSError:
            pass


def _accept(listener: socket.socket, running: dict, uid: int) -> None:
    conn, _ = listener.accept()
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    if struct.unpack("3i", creds)[1] != uid:
        conn.close()
        return
    try:
        conn.settimeout(30)
        request, fds = _recv(conn, with_fds=3)
        conn.settimeout(None)
    except (OSError, ConnectionError, pickle.PickleError, EOFError):
        conn.close()
        return
    why = _refusal(request) if len(fds) == 3 else "no standard streams"
    if why:
        for fd in fds:
            os.close(fd)
        _send(conn, {"status": "refused", "why": why})
        conn.close()
        return
    _send(conn, {"status": "accepted"})
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other, _ in running.values():
            other.close()
        conn.close()
        code = 1
        try:
            code = _run_child(request, fds)
        finally:
            os._exit(code if 0 <= code < 256 else 1)
    for fd in fds:
        os.close(fd)
    running[pid] = (conn, time.monotonic())


# -- lifetime (Snakefile) ---------------------------------------------------------------------------------

def start(log: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server for this process's jobs (``cwd``: the workflow's folder, so that its packages
    import); returns it and its socket path (export it in ENV)."""
    folder = tempfile.mkdtemp(prefix="l2c-jobs-")  # mode 0700: private to this user
    path = os.path.join(folder, "socket")
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "a") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "l2c.jobserver", path, "--parent", str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
                            env={k: v for k, v in os.environ.items() if k != ENV})
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, path


def stop(proc: subprocess.Popen, path: str) -> None:
    """Stop a server started by ``start`` (its running jobs finish first) and remove its socket."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    for p in (path, os.path.dirname(path)):
        try:
            os.rmdir(p) if p == os.path.dirname(path) else os.unlink(p)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m l2c.jobserver", description=__doc__.split("\n\n")[0])
    ap.add_argument("socket", help="Unix socket path to serve (its folder should be private to this user)")
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    a = ap.parse_args(argv)
    serve(a.socket, a.parent)


if __name__ == "__main__":
    main()
