"""bench/gpu_check.sh prints every GPU figure we claim; its --cpu path runs the same steps at tiny
shapes, so a broken benchmark or flag is caught here, before anyone spends GPU time on it."""
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_cpu_path_prints_every_figure(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu_check.sh"), "--cpu"], capture_output=True,
                       text=True, env=env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for figure in ("ours, frozen glyph table", "nanoGPT reference (tied, wpe)",  # training tokens/s, ours vs nanoGPT
                   "FLOP model, stage/mono",  # growth stage vs monolith
                   "| forward |", "| generate |",  # merge overhead
                   "arc_easy: 4 items", "same choice 4/4",  # eval throughput, and the same answers as lm-eval
                   "on cpu, equal: True",  # the glyph PCA's int8 products on the GPU against the CPU
                   "done: 20 iterations"):  # the 2-process DDP run (gloo here, NCCL on GPUs)
        assert figure in out, f"gpu_check.sh --cpu printed no {figure!r}"
    assert os.path.exists(os.path.join(REPO, "gpu_check.log"))
    os.remove(os.path.join(REPO, "gpu_check.log"))
