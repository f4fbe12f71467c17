"""A wasi:cli component: a small worker. It prints what the sandbox lets it see (the granted
environment and directories), then a heartbeat line every HEARTBEAT_SECONDS until it has
printed HEARTBEATS of them (0: forever, as a Deployment's worker would). Its output is the
container's log (`kubectl logs`); its exit code is the container's exit status.
"""

import os
import sys
import time

from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        print(f"hello from wa8s (cli): {sys.implementation.name} on {sys.platform}")
        print("environment:", ", ".join(sorted(os.environ)) or "(none granted)")
        for path in ("/config", "/tmp"):
            try:
                entries = sorted(os.listdir(path))
                print(f"{path}: {len(entries)} entries")
            except OSError as e:
                print(f"{path}: not granted ({e.strerror})")
        interval = float(os.environ.get("HEARTBEAT_SECONDS", "10"))
        beats = int(os.environ.get("HEARTBEATS", "0"))
        n = 0
        while beats == 0 or n < beats:
            time.sleep(interval)
            n += 1
            print(f"heartbeat {n}", flush=True)
