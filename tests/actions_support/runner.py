#!/usr/bin/python3
"""A stand-in for GitHub's Actions runner, for qci's tests.

qci starts it in the emulated dev VM exactly as it starts the real runner
(`run.sh --jitconfig ENCODED`). It replaces the runner's side of GitHub's
runner protocol only: it decodes its just-in-time config (here base64 JSON
naming the fake GitHub's URL, the runner's name and a one-time token),
takes its one job from the fake (`GET /_fake/runner/jobs?token=...`: the
workflow's YAML and the job's name), runs that job with `act` on the dev
VM's own shell (`-P LABEL=-self-hosted`), reports the result
(`POST /_fake/runner/result`) and exits, as an ephemeral runner does.

    runner.py --jitconfig ENCODED --act PATH_TO_ACT
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jitconfig", required=True)
    parser.add_argument("--act", required=True)
    parser.add_argument("--wait", type=float, default=120.0)
    args = parser.parse_args()
    config = json.loads(base64.b64decode(args.jitconfig))
    url, token = config["url"].rstrip("/"), config["token"]
    print(f"runner {config['runner_name']}: listening for a job", flush=True)
    job = None
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_fake/runner/jobs?token={token}") as reply:
                if reply.status == 200:
                    job = json.load(reply)
                    break
        except urllib.error.HTTPError as e:
            print(f"runner: refused: {e.code} {e.read().decode(errors='replace')}", flush=True)
            return 2
        time.sleep(0.1)
    if job is None:
        print("runner: no job came", flush=True)
        return 3
    print(f"runner: took job {job['job_id']} ({job['name']})", flush=True)
    work = tempfile.mkdtemp(prefix="qci-actions-")
    os.makedirs(os.path.join(work, ".github", "workflows"))
    workflow = os.path.join(work, ".github", "workflows", "job.yml")
    with open(workflow, "w") as f:
        f.write(job["workflow"])
    command = [args.act, "push", "-W", workflow, "-j", job["name"], "--action-offline-mode"]
    for label in job["labels"]:
        command += ["-P", f"{label}=-self-hosted"]
    for entry in job["matrix"]:
        command += ["--matrix", entry]
    done = subprocess.run(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = done.stdout.decode(errors="replace")
    print(output, flush=True)
    conclusion = "success" if done.returncode == 0 else "failure"
    body = json.dumps(
        {"job_id": job["job_id"], "token": token, "conclusion": conclusion, "output": output}
    ).encode()
    request = urllib.request.Request(
        f"{url}/_fake/runner/result",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as reply:
        reply.read()
    print(f"runner: job {job['job_id']}: {conclusion}", flush=True)
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
