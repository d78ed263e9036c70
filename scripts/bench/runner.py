#!/usr/bin/env python3
"""Times whole VMM runs over several repetitions and prints medians.

For each run: wall time from exec to exit, optionally the time until a marker appears on
stdout (e.g. "GUEST UP"), and the command's own peak RSS. The RSS comes from the small `rusage`
wrapper (scripts/bench/rusage.c, built by the bench scripts): a child forked from python would
inherit python's RSS high-water mark in ru_maxrss.

usage: runner.py --label NAME --rusage PATH [--runs N] [--marker TEXT [--stop-at-marker]]
                 [--timeout S] -- CMD ARGS...
--stop-at-marker kills the command once the marker is seen (for VMMs whose guest does not end
by itself, e.g. QEMU microvm, which has no i8042 to reset through); the run then counts as good.
Prints: `NAME wall_ms_median=.. wall_ms_min=.. rss_kib_median=.. runs=N [marker_ms_median=..]`
Exits non-zero (with the child's output) if a run fails: non-zero status, timeout, or no marker.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time


def run_once(cmd, marker, timeout, stop_at_marker=False):
    """Runs cmd once; returns (wall_s, marker_s or None, exit_code, stdout, stderr)."""
    rfd, wfd = os.pipe()
    with tempfile.TemporaryFile() as errf:
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(wfd, 1)
                os.dup2(errf.fileno(), 2)
                os.close(rfd)
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        os.close(wfd)
        os.set_blocking(rfd, False)
        out, t_marker, deadline = b"", None, t0 + timeout
        while True:
            try:
                chunk = os.read(rfd, 65536)
            except BlockingIOError:
                chunk = b""
            if chunk:
                out += chunk
                if marker and t_marker is None and marker.encode() in out:
                    t_marker = time.monotonic() - t0
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                break
            if time.monotonic() > deadline or (stop_at_marker and t_marker is not None):
                os.kill(pid, 9)
                _, status = os.waitpid(pid, 0)
                break
            if not chunk:
                time.sleep(0.0002)
        wall = time.monotonic() - t0
        os.set_blocking(rfd, True)
        while chunk := os.read(rfd, 65536):
            out += chunk
        os.close(rfd)
        errf.seek(0)
        err = errf.read()
    code = os.waitstatus_to_exitcode(status)
    return wall, t_marker, code, out.decode(errors="replace"), err.decode(errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--marker")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--stop-at-marker", action="store_true")
    ap.add_argument("--rusage", required=True, help="path of the built scripts/bench/rusage.c")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    walls, marks, rsss = [], [], []
    for i in range(a.runs):
        wall, t_marker, code, out, err = run_once([a.rusage] + cmd, a.marker, a.timeout,
                                                  a.stop_at_marker)
        rss = next((int(l.split("=")[1]) for l in err.splitlines()
                    if l.startswith("RUSAGE maxrss_kib=")), None)
        stopped = a.stop_at_marker and t_marker is not None
        if stopped:
            rss = rss or 0  # killed before it could report
        if (code != 0 and not stopped) or (a.marker and t_marker is None) or rss is None:
            sys.stderr.write(f"{a.label}: run {i} failed (exit {code}, marker seen: "
                             f"{t_marker is not None})\n--- stdout ---\n{out[-3000:]}\n"
                             f"--- stderr ---\n{err[-3000:]}\n")
            sys.exit(1)
        walls.append(wall * 1000)
        rsss.append(rss)
        if t_marker is not None:
            marks.append(t_marker * 1000)
    line = (f"{a.label} wall_ms_median={statistics.median(walls):.1f} "
            f"wall_ms_min={min(walls):.1f} rss_kib_median={statistics.median(rsss):.0f} "
            f"runs={a.runs}")
    if marks:
        line += f" marker_ms_median={statistics.median(marks):.1f}"
    print(line, flush=True)


if __name__ == "__main__":
    main()
