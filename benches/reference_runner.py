#!/usr/bin/env python3
"""A CI runner written the way securedrop-workstation-ci's dom0/runner.py is,
as a baseline for qci's benches (written for them, not copied).

    reference_runner.py PROJECT WORK LOG STEP...

It does what that runner does for one job, minus qrexec: wipes the previous
working directory, tars the project into a temporary file and unpacks it
with `tar xvf`, then runs each step with `Popen(...).communicate()` and logs
every output line with a timestamp, ANSI escapes removed, to LOG and stdout.
Steps are split with shlex, as the reference runs `make clone`.
"""

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime

ANSI_ESCAPE = re.compile(r"(\x9B|\x1B\[)[0-?]*[ -\/]*[@-~]")


def timestamp():
    now = datetime.now()
    return f"{now.strftime('%Y-%m-%d')}-{now.strftime('%H:%M:%S:%f')}"


def run_cmd(cmd, cwd):
    logging.info(f"[{timestamp()}] Running: {cmd}")
    p = subprocess.Popen(
        shlex.split(cmd),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = p.communicate()
    for line in out.splitlines():
        text = ANSI_ESCAPE.sub("", line.decode("utf-8", errors="replace"))
        logging.info(f"[{timestamp()}] {text}")
    if p.returncode != 0:
        logging.info(f"[{timestamp()}] Exception occurred during: {cmd}")
        raise SystemExit(1)
    logging.info(f"[{timestamp()}] Step finished")


def main():
    project, work, log, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    logging.basicConfig(
        format="%(levelname)s:%(message)s",
        level=logging.INFO,
        handlers=[logging.FileHandler(log), logging.StreamHandler(sys.stdout)],
    )
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    with tempfile.NamedTemporaryFile(suffix=".tar", dir=os.path.dirname(work)) as tarball:
        subprocess.check_call(
            ["tar", "-c", "-C", project, "--exclude=.git", "--exclude=.qci", "."],
            stdout=tarball,
        )
        run_cmd(f"tar xvf {tarball.name}", cwd=work)
    for step in steps:
        run_cmd(step, cwd=work)


if __name__ == "__main__":
    main()
