"""The web demo under load: 16 clients at once against a real server on 127.0.0.1.

Every request gets either its stylisations or a clean "queue full" refusal; the server stays
up, and its resident memory stays under a stated bound.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styletransfer import demo as demo_app
from styletransfer.norms import NORMS, norm_label

from .conftest import write_checkpoint

CLIENTS = 16
IMAGES_PER_CLIENT = 3
LONG_SIDE = 256
# Measured on CPU: about 0.95 GB once started (Gradio and torch), 1.1 GB at the peak of this test.
RSS_BOUND_MB = 1500
SHAPES = [(200, 50), (48, 160), (150, 50)]  # narrow pictures keep 48 stylisations of 4 norms quick


def resident_mb(pid: int, field: str = "VmRSS") -> int:
    """The process's resident memory (VmRSS) or its peak so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no {field} for process {pid}")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("load-images")
    paths = []
    for i, (w, h) in enumerate(SHAPES):
        pixels = (np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8)
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The web demo on a free loopback port, with four random-initialised checkpoints."""
    ckpts = tmp_path_factory.mktemp("load-ckpts")
    for seed, norm in enumerate(NORMS):
        write_checkpoint(ckpts, "stripes", norm, seed)
    port = demo_app.free_port()
    args = [sys.executable, "-m", "styletransfer", "demo", "--checkpoints", ckpts, "--port", port,
            "--host", "127.0.0.1", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(list(map(str, args)), cwd=Path(demo_app.__file__).parents[1], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
    deadline = time.time() + 120
    while not any("running on" in line for line in output):
        assert proc.poll() is None and time.time() < deadline, "".join(output)
        time.sleep(0.1)
    yield proc, f"http://127.0.0.1:{port}/", output
    proc.terminate()
    proc.wait(timeout=30)


def check_result(result, shape) -> str | None:
    """None if ``result`` is one image per norm at the right size and aspect, else what is wrong."""
    if [r["caption"].split(" · ")[0] for r in result] != [norm_label(n) for n in NORMS]:
        return f"captions {[r['caption'] for r in result]}"
    for r in result:
        with Image.open(r["image"]) as out:
            size = out.size
        if max(size) != LONG_SIDE or abs(size[0] / size[1] - shape[0] / shape[1]) > 0.03:
            return f"size {size} for a {shape} photo"
    return None


def one_client(url: str, images: list[Path], outcomes: Counter, problems: list[str]) -> None:
    """One client sends all its photos at once, then waits for every answer."""
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False)
        jobs = [(client.submit(handle_file(str(p)), "stripes", LONG_SIDE, api_name="/stylize"), shape)
                for p, shape in zip(images, SHAPES)]  # fmt: skip
    except Exception as e:  # noqa: BLE001 - any failure to connect is a problem to report
        problems.append(f"connect: {type(e).__name__}: {e}")
        return
    for job, shape in jobs:
        try:
            result = job.result(timeout=120)
        except Exception as e:  # noqa: BLE001
            if "queue is full" in str(e).lower():
                outcomes["queue full"] += 1
            else:
                problems.append(f"{type(e).__name__}: {e}")
            continue
        problem = check_result(result, shape)
        outcomes["answered" if problem is None else "wrong"] += 1
        if problem:
            problems.append(problem)


def test_sixteen_clients_at_once(server, images):
    proc, url, output = server
    baseline = resident_mb(proc.pid)
    outcomes, problems = Counter(), []
    threads = [threading.Thread(target=one_client, args=(url, images, outcomes, problems)) for _ in range(CLIENTS)]
    start = time.time()
    for t in threads:
        t.start()
    samples = []
    while any(t.is_alive() for t in threads):
        samples.append(resident_mb(proc.pid))
        time.sleep(0.2)
    seconds, peak = time.time() - start, resident_mb(proc.pid, "VmHWM")
    print(f"{CLIENTS} clients x {IMAGES_PER_CLIENT} photos in {seconds:.1f} s: {dict(outcomes)}; server RSS "
          f"{baseline} MB at start, {max(samples, default=baseline)} MB sampled max, {peak} MB peak (bound {RSS_BOUND_MB} MB)")  # fmt: skip
    assert problems == []
    assert outcomes["answered"] + outcomes["queue full"] == CLIENTS * IMAGES_PER_CLIENT
    assert outcomes["answered"] >= demo_app.QUEUE_SIZE  # a full queue's worth got through
    assert peak < RSS_BOUND_MB
    assert proc.poll() is None, "the server died"
    one_client(url, images[:1], outcomes, problems)  # and it still answers
    assert problems == [] and outcomes["answered"] > CLIENTS * IMAGES_PER_CLIENT - outcomes["queue full"]
    assert "Traceback" not in "".join(output)
