"""A benchmark's child process, spoken to in lines: each request is one line
on its stdin, each reply one JSON line on its stdout. Its stderr is the
parent's, so a worker's traceback shows up above the error that reports it."""
from __future__ import annotations

import json
import os
import subprocess


class WorkerProcess:
    def __init__(self, name, cmd, env):
        self.name = name
        self._script = os.path.basename(cmd[1])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def request(self, line):
        """Send one request line; return the reply."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def read(self):
        """The next reply (a JSON line), or RuntimeError if the worker is gone."""
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self._script}: the {self.name} worker died (exit code "
                               f"{self.proc.wait()}; its error is above)")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
