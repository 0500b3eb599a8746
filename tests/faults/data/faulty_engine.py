"""``python -m lora_engine.train CONFIG.json`` with one injected fault (fault tests only).

The environment chooses the fault; without ``FAULT`` this is the plain engine:

  FAULT=kill_mid_write        SIGKILL itself while writing checkpoint FAULT_STEP: its tensors and
                              optimizer are written, its RNG file is not (a half-full temp dir)
  FAULT=kill_before_manifest  SIGKILL itself after checkpoint FAULT_STEP's dir was renamed into
                              place, before the manifest lists it
  FAULT=pause_mid_write       like kill_mid_write, but create the file FAULT_MARKER and sleep
                              (the test kills it, as a worker that lost its lease does)
  FAULT=disk_full             from checkpoint FAULT_STEP on, no file may grow past FAULT_FSIZE
                              bytes (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk)
  FAULT=disk_full_final       the same limit, set just before the final adapter is written
"""

import os
import resource
import signal
import sys
import time
from pathlib import Path

from lora_engine import checkpoint, train

FAULT = os.environ.get("FAULT", "")
STEP = int(os.environ.get("FAULT_STEP", "0"))
writing = {"step": None}

real_save_rng_state = checkpoint.save_rng_state
real_atomic_write_text = checkpoint.atomic_write_text
real_save_checkpoint = train.FineTuneRecipe.save_checkpoint
real_save_final = train.FineTuneRecipe._save_final


def step_of_temp_dir(path: Path) -> int:
    # atomic_dir's temp dir: ".step-000006.tmp-1a2b3c4d"
    return int(path.parent.name.split(".")[1].removeprefix("step-"))


def save_rng_state(state, path):
    step = step_of_temp_dir(Path(path))
    writing["step"] = step
    if step == STEP and FAULT == "kill_mid_write":
        os.kill(os.getpid(), signal.SIGKILL)
    if step == STEP and FAULT == "pause_mid_write":
        Path(os.environ["FAULT_MARKER"]).write_text(str(os.getpid()))
        time.sleep(600)
    return real_save_rng_state(state, path)


def atomic_write_text(path, text):
    if writing["step"] == STEP and FAULT == "kill_before_manifest" and Path(path).name == checkpoint.MANIFEST:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_atomic_write_text(path, text)


def limit_file_size():
    # Python ignores SIGXFSZ already (a write past the limit fails with EFBIG); say so.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(os.environ["FAULT_FSIZE"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def save_checkpoint(self):
    if FAULT == "disk_full" and self.step >= STEP:
        limit_file_size()
    return real_save_checkpoint(self)


def save_final(self):
    if FAULT == "disk_full_final":
        limit_file_size()
    return real_save_final(self)


checkpoint.save_rng_state = save_rng_state
checkpoint.atomic_write_text = atomic_write_text
train.FineTuneRecipe.save_checkpoint = save_checkpoint
train.FineTuneRecipe._save_final = save_final

if __name__ == "__main__":
    raise SystemExit(train.main(sys.argv[1:]))
