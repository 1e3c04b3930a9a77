"""
The few helpers every stage shares: config parsing, device/dtype, DDP, atomic writes, .npy header
checks. Everything model- or stage-specific lives in its own script.
"""
import dataclasses
import hashlib
import inspect
import json
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

# -----------------------------------------------------------------------------
# config: a dataclass of commented defaults, a preset, then --key value / --key=value overrides

BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}


def parse_config(cfg_cls, presets, argv=None):
    """Build `cfg_cls` from `--preset NAME` (a dict of overrides in `presets`) and `--key value`
    or `--key=value` overrides, in that order. A boolean may stand alone (`--flag` = true) or take
    a value (`--flag=false`, `--flag false`). `--help` prints the script's docstring and the
    dataclass source, whose comments are the documentation of every field."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(sys.modules[cfg_cls.__module__].__doc__)
        print(inspect.getsource(cfg_cls))
        print("presets:", ", ".join(presets))
        sys.exit(0)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    kv, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            sys.exit(f"error: unexpected argument {arg!r} (options are --key value or --key=value; see --help)")
        key, eq, value = arg[2:].partition("=")
        if key not in fields:
            sys.exit(f"error: unknown option --{key} (see --help)")
        if not eq:
            is_bool = isinstance(fields[key].default, bool)
            if is_bool and not (i < len(argv) and argv[i].lower() in BOOL_WORDS):
                value = "true"  # a bare --flag
            elif i < len(argv) and not (argv[i].startswith("--") and len(argv[i]) > 2):
                value, i = argv[i], i + 1
            else:
                sys.exit(f"error: option --{key} needs a value (--{key} VALUE or --{key}=VALUE)")
        kv[key] = value
    preset = kv.pop("preset", "toy")
    if preset not in presets:
        sys.exit(f"error: unknown preset {preset!r}; choose one of {', '.join(presets)}")
    cfg = cfg_cls(**presets[preset])
    cfg.preset = preset
    for key, value in kv.items():
        setattr(cfg, key, _cast(key, value, type(getattr(cfg, key))))
    return cfg


def _cast(key, value, typ):
    if typ is bool:
        if value.lower() not in BOOL_WORDS:
            sys.exit(f"error: --{key} expects true or false, got {value!r}")
        return BOOL_WORDS[value.lower()]
    try:
        return typ(value)
    except ValueError:
        sys.exit(f"error: --{key} expects a{'n' if typ is int else ''} {typ.__name__}, got {value!r}")


# -----------------------------------------------------------------------------
# device and precision: cuda -> mps -> cpu; bf16 autocast only on cuda, where it pays


def pick_device(name="auto"):
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device):
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU bf16 is slow and MPS is partial)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def weights_dtype(device):
    """The dtype a frozen pretrained model (an LLM, the audio captioner) is loaded in: bf16 on
    CUDA, float32 elsewhere, for the reason autocast gives."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def get_lr(step, cfg):
    """The training stages' schedule: 1) linear warm-up to cfg.lr, 2) cosine decay to lr/10 at
    cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


# -----------------------------------------------------------------------------
# distributed: torchrun sets RANK/WORLD_SIZE; on one process all of this disappears


def setup_ddp():
    """Returns (rank, world_size). Initialises the process group under torchrun
    (NCCL on GPU, gloo on CPU); a plain `python script.py` gets (0, 1)."""
    if "RANK" not in os.environ:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def all_mean(x):
    """The mean of a tensor over ranks (the tensor itself on one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    x = x.clone()
    torch.distributed.all_reduce(x)
    return x / torch.distributed.get_world_size()


def weights_digest(params):
    """A short sha256 of the parameters' bytes. Each rank of a DDP job prints it at the end of
    training: the ranks hold the same weights exactly when they print the same digest."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


# -----------------------------------------------------------------------------
# files: every output is written to a temporary name, then renamed, so an interrupted
# job never leaves a half-written file that a resumed job would take for finished


@contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; renames it to `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_json(obj, path):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2) + "\n")


def record_timing(out_dir, name, t0):
    """Adds `name: seconds since t0` to out_dir/timing.json (the demo's per-stage table)."""
    path = Path(out_dir) / "timing.json"
    timing = json.loads(path.read_text()) if path.exists() else {}
    timing[name] = round(time.time() - t0, 1)
    save_json(timing, path)


# -----------------------------------------------------------------------------
# .npy files checked by their header alone, so that a bad file among 200 k is found in seconds
# before training starts rather than hours into it


def check_npy(path, shape, kinds):
    """What is wrong with the .npy file at `path`, in a few words, or None when it holds an array of
    exactly `shape` (None on an axis: any length) whose dtype kind is one of `kinds` ("f" float,
    "iu" integer) and whose data is all there. Reads only the header (np.lib.format) and the file
    size, never the data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            file_shape, _, dtype = read_header(f)
            data_start = f.tell()
    except FileNotFoundError:
        return "no such file"
    except (ValueError, OSError, EOFError) as e:  # numpy's errors for a wrong magic string or header
        return "empty file" if os.path.getsize(path) == 0 else f"not a .npy file ({str(e).splitlines()[0][:80]})"
    if dtype.hasobject:
        return f"holds pickled Python objects ({dtype}), not numbers"
    if dtype.kind not in kinds:
        return f"dtype {dtype}, expected {'integers' if kinds == 'iu' else 'floats'}"
    if not shape_fits(shape, file_shape):
        return f"shape {file_shape}, expected {shape_str(shape)}"
    n_bytes = math.prod(file_shape) * dtype.itemsize
    if os.path.getsize(path) < data_start + n_bytes:
        return f"truncated: {os.path.getsize(path) - data_start} of its {n_bytes} data bytes"
    return None


def shape_fits(expected, shape):
    """Whether `shape` is `expected`, where None in `expected` is any length on that axis."""
    return len(shape) == len(expected) and all(n is None or n == m for n, m in zip(expected, shape))


def shape_str(shape, free="frames"):
    """(None, 768) -> '(frames, 768)': an expected shape with its free axes named."""
    return "(" + ", ".join(free if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
