"""`hastelm serve` itself, as the README runs it: a real process on loopback with the methods the
operator enabled; a bad start-up option is one line and exit 2."""
from __future__ import annotations

import subprocess
import sys

import httpx

from hastelm.bench.serve_cli import free_port, launch_server


def test_hastelm_serve_starts_and_serves_only_what_it_enabled(smollm_path):
    port = free_port()
    proc = launch_server(str(smollm_path), port, 2, ["--speculative", "none,pld", "--context-length", "512"])
    try:
        url = f"http://127.0.0.1:{port}"
        body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        ok = httpx.post(f"{url}/v1/chat/completions", json={**body, "speculative": "pld"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
        refused = httpx.post(f"{url}/v1/chat/completions", json={**body, "speculative": "recycling:/tmp/x.npy"},
                             timeout=60)
        assert refused.status_code == 400 and "none, pld" in refused.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_recycling_file_that_cannot_be_written_stops_the_start(smollm_path, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hastelm.cli", "serve", "-m", str(smollm_path),
                           "--speculative", f"recycling:{tmp_path}/missing/dir/m.npy", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot write the recycling matrix" in lines[0], proc.stderr
