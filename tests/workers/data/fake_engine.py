"""A scripted stand-in for ``python -m lora_engine.train CONFIG.json`` (worker tests only).

``FAKE_ENGINE_SCRIPT`` names a JSON list of actions, run in order:
  {"emit": {...}}            print one protocol line on stdout
  {"stdout": "text"}         print a raw (non-protocol) line on stdout
  {"stderr": "text"}         write a line to stderr (the attempt log)
  {"sleep": seconds}
  {"train": {"steps": N, "delay": s, "checkpoint_every": k}}
                             metrics per step; at a step boundary, if the config's stop_file
                             exists (or SIGTERM came): checkpoint, "stopped" line, exit 3
  {"adapter": true}          write output_dir/adapter/{adapter_config.json, adapter_model.safetensors}
  {"full_model": true}       write output_dir/model/{config.json, model.safetensors} (a full fine-tune)
  {"done": true}             print a "done" line for the model dir if one was written, else the adapter dir
  {"kill_self": signum}
  {"exit": code}
The child's pid is written to ``<job dir>/fake.pid`` (the stop file's dir), its config to
``<job dir>/fake.config.json``. Checkpoints are listed in a manifest like the engine's (with
empty state files), and with ``resume`` in the config the run continues after the newest
listed one in its own ``output_dir``, saying "resumed from <path> at step <n>".
"""

import json
import os
import signal
import sys
import time

with open(sys.argv[1]) as fh:
    cfg = json.load(fh)
with open(os.environ["FAKE_ENGINE_SCRIPT"]) as fh:
    script = json.load(fh)
out = cfg["output_dir"]
os.makedirs(out, exist_ok=True)
job_dir = os.path.dirname(cfg["stop_file"])
with open(os.path.join(job_dir, "fake.pid"), "w") as fh:
    fh.write(str(os.getpid()))
with open(os.path.join(job_dir, "fake.config.json"), "w") as fh:
    json.dump(cfg, fh)
MANIFEST = os.path.join(out, "checkpoints", "manifest.json")
STATE_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.safetensors", "state.json")

term = {"seen": False}
signal.signal(signal.SIGTERM, lambda *_: term.update(seen=True))


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def listed():
    if not os.path.exists(MANIFEST):
        return []
    with open(MANIFEST) as fh:
        return json.load(fh)["checkpoints"]


def checkpoint(step):
    path = os.path.join(out, "checkpoints", f"step-{step:06d}")
    os.makedirs(path, exist_ok=True)
    for name in STATE_FILES:
        with open(os.path.join(path, name), "w") as fh:
            fh.write(str(step))
    entries = [e for e in listed() if e["step"] != step] + [{"step": step, "dir": os.path.basename(path)}]
    tmp = MANIFEST + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"version": 1, "checkpoints": sorted(entries, key=lambda e: e["step"])}, fh)
    os.replace(tmp, MANIFEST)
    emit({"type": "checkpoint", "step": step, "path": path, "metrics": {"loss": 1.0 / step}})
    return path


start_step = 0
if cfg.get("resume") and listed():
    start_step = listed()[-1]["step"]
    emit({"type": "message", "level": "info", "message": f"resumed from {listed()[-1]['dir']} at step {start_step}"})


for action in script:
    if "emit" in action:
        emit(action["emit"])
    elif "stdout" in action:
        print(action["stdout"], flush=True)
    elif "stderr" in action:
        print(action["stderr"], file=sys.stderr, flush=True)
    elif "sleep" in action:
        time.sleep(action["sleep"])
    elif "train" in action:
        t = action["train"]
        n, every = t["steps"], t.get("checkpoint_every", 0)
        for step in range(start_step + 1, n + 1):
            time.sleep(t.get("delay", 0.0))
            emit(
                {
                    "type": "metrics",
                    "step": step,
                    "total_steps": n,
                    "epoch": step / n,
                    "loss": 2.0 / step,
                    "lr": 1e-4,
                    "grad_norm": 1.0,
                    "tokens_per_s": 100.0,
                    "trained_tokens": 10 * step,
                    "progress": 100.0 * step / n,
                    "eta_s": float(n - step),
                    "eval_loss": None,
                }
            )
            if every and step % every == 0:
                checkpoint(step)
            if term["seen"] or (cfg.get("stop_file") and os.path.exists(cfg["stop_file"])):
                emit({"type": "stopped", "step": step, "checkpoint": checkpoint(step)})
                sys.exit(3)
    elif "adapter" in action:
        os.makedirs(os.path.join(out, "adapter"), exist_ok=True)
        with open(os.path.join(out, "adapter", "adapter_config.json"), "w") as fh:
            json.dump({"r": cfg["rank"], "lora_alpha": cfg["alpha"]}, fh)
        with open(os.path.join(out, "adapter", "adapter_model.safetensors"), "wb") as fh:
            fh.write(b"fake-weights")
    elif "full_model" in action:
        os.makedirs(os.path.join(out, "model"), exist_ok=True)
        with open(os.path.join(out, "model", "config.json"), "w") as fh:
            json.dump({"model_type": "llama"}, fh)
        with open(os.path.join(out, "model", "model.safetensors"), "wb") as fh:
            fh.write(b"fake-full-weights")
    elif "done" in action:
        result = "model" if os.path.isdir(os.path.join(out, "model")) else "adapter"
        emit(
            {
                "type": "done",
                "adapter_dir": os.path.join(out, result),
                "steps": 3,
                "trained_tokens": 30,
                "final_loss": 0.5,
                "eval_loss": None,
            }
        )
    elif "kill_self" in action:
        os.kill(os.getpid(), action["kill_self"])
        time.sleep(5)
    elif "exit" in action:
        sys.exit(action["exit"])
sys.exit(0)
