"""
The few helpers every stage shares: config parsing, device/dtype, DDP, atomic writes, .npy header
checks. Everything model- or stage-specific lives in its own script.
"""
import dataclasses
import fcntl
import hashlib
import inspect
import json
import math
import os
import re
import resource
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file

# -----------------------------------------------------------------------------
# config: a dataclass of commented defaults, a preset, then --key value / --key=value overrides

_BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}


def parse_config(cfg_cls, presets, argv=None):
    """Build `cfg_cls` from `--preset NAME` (a dict of overrides in `presets`) and `--key value`
    or `--key=value` overrides, in that order. A boolean may stand alone (`--flag` = true) or take
    a value (`--flag=false`, `--flag false`). `--help` prints the script's docstring and the
    dataclass source (and that of the Config it extends), whose comments document every field."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(sys.modules[cfg_cls.__module__].__doc__)
        for cls in reversed(cfg_cls.__mro__):  # a Config that extends another's: the other's fields first
            if dataclasses.is_dataclass(cls):
                print(inspect.getsource(cls))
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
            if is_bool and not (i < len(argv) and argv[i].lower() in _BOOL_WORDS):
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
        if value.lower() not in _BOOL_WORDS:
            sys.exit(f"error: --{key} expects true or false, got {value!r}")
        return _BOOL_WORDS[value.lower()]
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
# the training loop's plumbing, shared by both trainers: the batch plan, the input pipeline, the log


def split_batch(batch_size, micro_batch, world):
    """An optimizer step's global batch (batch_size samples, all processes together) as each
    process runs it: its share of batch_size / world samples, micro_batch (0: the whole share) at a
    time, gradients accumulated over the rest. So a preset trains the same run on any number of
    GPUs. Returns (micro, accum); one error line when the batch does not split."""
    if batch_size % world:
        sys.exit(f"error: --batch_size={batch_size} (the global batch) does not split over {world} processes")
    share = batch_size // world
    micro = min(micro_batch or share, share)
    if share % micro:
        sys.exit(f"error: each of the {world} processes takes {share} samples of --batch_size={batch_size}: "
                 f"not a whole number of --micro_batch={micro_batch}")
    return micro, share // micro


def print_plan(cfg, world, micro, accum, tokens_per_sample, n_train):
    """What the run will train, at its start: the step's batch and how it is split, its tokens,
    and the epochs over the training clips that max_steps makes."""
    epochs = cfg.max_steps * cfg.batch_size / max(1, n_train)
    print0(f"each step: a global batch of {cfg.batch_size} = {world} process{'es' if world > 1 else ''} x "
           f"{accum} accumulated micro-batch{'es' if accum > 1 else ''} x {micro} | "
           f"~{cfg.batch_size * tokens_per_sample:,.0f} tokens | {cfg.max_steps:,} steps = {epochs:,.1f} epochs "
           f"over {n_train:,} training clips")


class _Steps(torch.utils.data.Dataset):
    def __init__(self, draw):
        self.draw = draw

    def __getitem__(self, step):
        return self.draw(step)


def step_batches(draw, first, last, workers, device):
    """draw(step) -> the data of training step `step` (a function of the seed and the step alone),
    for steps first .. last - 1, read ahead by `workers` DataLoader processes (0: in this one, the
    toy's) into pinned memory on CUDA, so that reading clips overlaps the GPU's work."""
    return iter(torch.utils.data.DataLoader(_Steps(draw), sampler=range(first, last), batch_size=None,
                                            num_workers=workers, pin_memory=device.type == "cuda",
                                            prefetch_factor=4 if workers else None))


def to_device(x, device):
    """A batch's tensor on the device; from pinned memory, a copy that does not wait for the GPU."""
    return x.to(device, non_blocking=True)


def unwrap(model):
    """The module inside torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def adamw(params, cfg, device):
    """AdamW, fused into one kernel per step on CUDA (the foreach version elsewhere)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)


class TrainingLog:
    """What a day-long run is steered by, every log_interval steps: loss, lr, gradient norm, the
    step time split into data wait and compute, samples and tokens per second (all processes),
    MFU (model FLOPs per second over the device's bf16 peak) and peak memory; with
    cfg.tensorboard, the same into out_dir/tensorboard."""

    # dense bf16 tensor-core peaks in TFLOP/s (NVIDIA data sheets); the first key in the device's name wins
    PEAK_BF16 = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}

    @staticmethod
    def peak_tflops(device):
        """The device's dense bf16 peak (PEAK_BF16), None where unknown (a CPU, another GPU)."""
        if device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in TrainingLog.PEAK_BF16.items() if k in name), None)

    @staticmethod
    def peak_memory_gb(device):
        """The most memory this process has held: allocated on CUDA, the peak resident set elsewhere."""
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device) / 1e9
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e9

    def __init__(self, cfg, device, rank, world, name):
        self.cfg, self.device, self.world, self.peak = cfg, device, world, self.peak_tflops(device)
        self.writer = None
        if cfg.tensorboard and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                sys.exit("error: --tensorboard needs the tensorboard package: pip install tensorboard")
            self.writer = SummaryWriter(Path(cfg.out_dir) / "tensorboard" / name)  # a folder per stage
        self.restart()

    def restart(self):
        """Start a new interval (after a validation, which is no training time)."""
        self.t0, self.wait, self.steps, self.samples, self.tokens, self.flops = time.perf_counter(), 0.0, 0, 0, 0, 0.0
        self.loss_sum, self.applied = 0.0, 0  # the interval's losses of the steps applied, summed on the device

    def next(self, batches):
        """The next step's data, the time spent waiting for it counted as data wait."""
        t = time.perf_counter()
        data = next(batches)
        self.wait += time.perf_counter() - t
        return data

    def add(self, samples, tokens, flops, loss, applied):
        """A step done: its samples, tokens and FLOPs, and its loss when it was applied (optimizer_step)."""
        self.steps, self.samples, self.tokens, self.flops = (self.steps + 1, self.samples + samples,
                                                             self.tokens + tokens, self.flops + flops)
        if applied:
            self.loss_sum, self.applied = self.loss_sum + loss, self.applied + 1

    def write(self, step, lr, grad_norm):
        """The interval's line (on every rank: the mean loss over the ranks is a collective)."""
        loss = all_mean(torch.as_tensor(self.loss_sum)).item() / self.applied if self.applied else math.nan
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the GPU runs ahead of the host: count its work in
        wall = time.perf_counter() - self.t0
        mfu = self.flops / self.world / wall / (self.peak * 1e12) if self.peak else None
        row = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped_steps": self.steps - self.applied,
               "step_ms": 1000 * wall / self.steps, "data_wait": self.wait / wall, "samples_per_s": self.samples / wall,
               "tokens_per_s": self.tokens / wall, "peak_memory_gb": self.peak_memory_gb(self.device)}
        print0(f"step {step}/{self.cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | "
               + (f"{row['skipped_steps']} skipped | " if row["skipped_steps"] else "")
               + f"{row['step_ms']:.0f} ms/step ({100 * row['data_wait']:.0f}% data wait) | "
               f"{row['samples_per_s']:.1f} samples/s | {row['tokens_per_s']:,.0f} tok/s | "
               + (f"MFU {100 * mfu:.1f}% | " if mfu is not None else "")
               + f"peak memory {row['peak_memory_gb']:.1f} GB")
        self.scalars("train", row | ({"mfu": mfu} if mfu is not None else {}), step)
        self.restart()

    def validation(self, step, loss):
        print0(f"step {step}: val loss {loss:.4f}")
        self.scalars("val", {"loss": loss}, step)

    def scalars(self, group, row, step):
        if self.writer:
            for key, value in row.items():
                self.writer.add_scalar(f"{group}/{key}", value, step)
            self.writer.flush()


def data_parallel(model, world):
    """The model under DDP on several processes, itself on one. Its buffers (codebooks, positions)
    never change, so they are not sent again at every forward, and the gradients live in DDP's
    buckets rather than in a second copy."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False, gradient_as_bucket_view=True)


def optimizer_step(optimizer, params, grad_clip):
    """The gradients, clipped to norm grad_clip, into the weights, unless their norm is not finite
    (a NaN or an infinity in any of them: clipping would spread it to every weight): that step is
    skipped. The norm is the same on every rank, as DDP has averaged the gradients, so the ranks
    skip together. Returns the norm and whether the step was applied."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    applied = bool(torch.isfinite(grad_norm))
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, applied


def train_loop(cfg, step, end, batches, train_step, validate, checkpoint, writer, log, rank):
    """Steps `step` .. end - 1 of a stage, as both trainers run them. train_step(data, step) ->
    (loss, grad_norm, applied, tokens, flops) on each step's data from `batches`; every
    cfg.eval_interval steps and at the end, validate(step) -> the validation loss, and rank 0 saves
    checkpoint(step, validation loss) through `writer` (start_checkpoints'), also every
    cfg.save_every_min minutes in between. A skipped step (optimizer_step) is counted; after
    cfg.max_bad_steps of them in a row the run stops. A non-finite validation loss saves nothing."""
    first, bad, saved = step, 0, time.monotonic()
    while True:
        last = step >= end
        if step % cfg.eval_interval == 0 or last:
            validation_loss = validate(step)
            log.validation(step, validation_loss)
            if rank == 0 and step > first:
                if math.isfinite(validation_loss):
                    writer.save(checkpoint(step, validation_loss), step)
                    saved = time.monotonic()
                else:
                    print0(f"warning: step {step}: the validation loss is {validation_loss}: nothing saved, "
                           f"{writer.where()}")
            log.restart()
        elif rank == 0 and cfg.save_every_min > 0 and time.monotonic() - saved >= 60 * cfg.save_every_min:
            writer.save(checkpoint(step, None), step)
            saved = time.monotonic()
        if last:
            break
        writer.check()
        data = log.next(batches)
        loss, grad_norm, applied, tokens, flops = train_step(data, step)
        step += 1
        bad = 0 if applied else bad + 1
        if not applied:
            where = (f"step {step - 1}: the gradient norm is {grad_norm.item()} (this rank's clips: "
                     f"{', '.join(data['names'])})")
            if bad >= cfg.max_bad_steps:
                writer.wait()
                sys.exit(f"error: {where}: {bad} steps in a row with a gradient that is not finite, none of them "
                         f"applied (--max_bad_steps={cfg.max_bad_steps}); the weights stay finite, {writer.where()}")
            print0(f"warning: {where}: step skipped")
        log.add(cfg.batch_size, tokens, flops, loss, applied)
        if step % cfg.log_interval == 0:  # on every rank: the log's mean loss is a collective
            log.write(step, get_lr(step - 1, cfg), grad_norm.item())
    writer.wait()


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


def _file_mode():
    """The mode a new file gets under this process's umask (read once: os.umask can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _sync(path):
    """Asks the disk to hold what was written to a file, or a folder's list of names (fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _previous_path(path):
    """Where a checkpoint's predecessor is kept: stage2.pt -> stage2.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


@contextmanager
def atomic_path(path, keep_previous=False):
    """Yields a temporary path next to `path`; renames it to `path` on success. The file ends up
    with the mode the umask gives a new file (mkstemp's temporary is private to its owner). With
    keep_previous (checkpoints) a crash at any moment leaves a readable file: the new one is synced
    to the disk before the rename and the folder after it, and the file it replaces is kept as
    _previous_path(path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        if keep_previous:
            _sync(tmp)
            if path.exists():
                os.replace(path, _previous_path(path))
        os.replace(tmp, path)
        if keep_previous:
            _sync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _remove_unfinished_writes(path):
    """Removes what a write of `path` killed midway left: atomic_path's temporary files of it
    (.<stem>.<8 characters><suffix>, mkstemp's names), in its folder alone. Returns their names."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.[a-z0-9_]{{8}}{re.escape(path.suffix)}")
    found = sorted(p for p in path.parent.glob(f".{path.stem}.*{path.suffix}") if pattern.fullmatch(p.name))
    for p in found:
        p.unlink()
    return [p.name for p in found]


def _save_checkpoint(obj, path):
    """torch.save of obj to `path`, the checkpoint it replaces kept (atomic_path, keep_previous).
    A write that fails, a full disk say, leaves both checkpoints as they were."""
    with atomic_path(path, keep_previous=True) as tmp:
        torch.save(obj, tmp)


def _host_copy(obj):
    """obj with each tensor copied to host memory: what a checkpoint holds while training goes on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


def _non_finite(obj, where=""):
    """The places in a nested dict / list of a checkpoint whose floating-point tensors hold a NaN or an infinity."""
    if isinstance(obj, torch.Tensor):
        return [where] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        return [w for k, v in obj.items() for w in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [w for i, v in enumerate(obj) for w in _non_finite(v, f"{where}[{i}]")]
    return []


class _CheckpointWriter:
    """Rank 0's checkpoints at `path`, written while training goes on: save() copies the state to
    host memory (all the other ranks wait for), then a thread checks that every number is finite
    and writes it (_save_checkpoint). A write that fails stops the run at the next check() with one
    line; the checkpoints on disk stay as they were. `last`: (step) of the newest good checkpoint."""

    def __init__(self, path, last=None):
        self.path, self.last, self.thread, self.error = Path(path), last, None, None

    def save(self, obj, step):
        self.wait()
        state = _host_copy(obj)
        self.thread = threading.Thread(target=self._write, args=(state, step), name="checkpoint writer")
        self.thread.start()

    def _write(self, state, step):
        try:
            if bad := _non_finite(state):
                raise ValueError(f"step {step}: not finite: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
            _save_checkpoint(state, self.path)
            self.last = step
        except BaseException as e:  # noqa: BLE001 (handed to the training thread by check())
            self.error = e

    def check(self):
        """Stops the run if a write failed: with one line for a disk's error or non-finite weights, else re-raised."""
        error, self.error = self.error, None
        if isinstance(error, (OSError, ValueError)):
            sys.exit(f"error: could not write {self.path} ({error}); {self.where()}")
        if error is not None:
            raise error

    def wait(self):
        """The write in progress finished, and checked."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self.check()

    def where(self):
        """The newest good checkpoint, in words."""
        if self.last is None:
            return f"this run has no checkpoint at {self.path} yet"
        return f"the last good checkpoint is {self.path} (step {self.last})"


def _read_safetensors(path):
    """The pair save_safetensors wrote -> one dict ("model": the tensors)."""
    return {**json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8")), "model": load_file(path)}


# the two kinds of checkpoint this project writes, as their error messages name them
_CHECKPOINT_KINDS = {"vatt-converter": "stage-1 (Converter)", "vatt-audio": "stage-2 (VATT Audio)"}


def _load_checkpoint(path, kind):
    """A checkpoint this project wrote, of `kind` (_CHECKPOINT_KINDS): a .pt loaded with
    weights_only=True (tensors and plain Python values only, so a file whose pickle would run code
    is refused, never run), or a save_safetensors pair. ValueError says why a file is not one."""
    what = _CHECKPOINT_KINDS[kind]
    try:
        if str(path).endswith(".safetensors"):
            ckpt = _read_safetensors(path)
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (garbage, a truncated or empty file, pickled objects, no .json)
        raise ValueError(f"not a readable {what} checkpoint ({load_error(path, e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else None
        raise ValueError(f"not a {what} checkpoint" + (f" (a {found!r} one)" if found else ""))
    return ckpt


def read_checkpoint(path, kind, hint=""):
    """A checkpoint this project wrote (_load_checkpoint); a missing, unreadable or other file stops
    the run with one line (`hint` says how to make it)."""
    if not os.path.isfile(path):
        sys.exit(f"error: {path}: no such checkpoint{hint}")
    try:
        return _load_checkpoint(path, kind)
    except ValueError as e:
        sys.exit(f"error: {path}: {e}")


def start_checkpoints(path, kind, resume, rank):
    """A training run's checkpoints at `path`, at its start: what a killed write left removed (rank
    0), the checkpoint to go on from when `resume`, and the writer of the next ones. That is the
    run's own at `path`, or the one before it (.prev) when that one is missing, unreadable or not
    finite: one line says so, and the bad file is moved aside (.bad), so that the next save does
    not keep it as the one before. None when the run has neither. Returns it and the writer."""
    path, previous = Path(path), _previous_path(path)
    if rank == 0:
        for name in _remove_unfinished_writes(path):
            print0(f"removed {path.parent / name}: a checkpoint write that did not finish")
    ckpt, problem = None, None
    for candidate in (path, previous) if resume and (path.is_file() or previous.is_file()) else ():
        try:
            if not candidate.is_file():
                raise ValueError("missing")
            ckpt = _load_checkpoint(candidate, kind)
            if bad := _non_finite(ckpt):
                raise ValueError(f"not finite: {', '.join(bad[:3])}")
            break
        except ValueError as e:
            ckpt, problem = None, problem or f"{candidate}: {e}"
    if resume and ckpt is None and problem is not None:
        sys.exit(f"error: nothing to resume from: {problem}, and {previous}: " +
                 ("missing" if not previous.is_file() else "unusable too"))
    if ckpt is not None:
        aside = path.with_name(f"{path.stem}.bad{path.suffix}")
        if candidate == previous and path.is_file() and rank == 0:
            os.replace(path, aside)
        print0(f"resuming from {candidate} at step {ckpt['step']}" +
               (f" ({problem}{f'; moved to {aside.name}' if path != candidate and aside.is_file() else ''})"
                if problem else ""))
    return ckpt, _CheckpointWriter(path, None if ckpt is None else ckpt["step"])


def read_init_checkpoint(path, kind, own_checkpoint):
    """The trained checkpoint a fine-tuning run starts from (--init_from), refused when it is the
    run's own output, which --resume continues instead."""
    if Path(path).resolve() == Path(own_checkpoint).resolve():
        sys.exit(f"error: --init_from={path} is this run's own checkpoint: write the fine-tuned model to another --out_dir")
    return read_checkpoint(path, kind, " (--init_from)")


def load_error(path, error, allowed=()):
    """Why a checkpoint file was refused, in a few words: not a checkpoint file at all, the globals
    its pickle would import (and so run; torch.load(weights_only=True) refuses them) apart from the
    `allowed` names, or else the error's first line."""
    if not str(path).endswith(".safetensors"):
        if not zipfile.is_zipfile(path):  # torch.save has written zip files since torch 1.6
            return "empty file" if os.path.getsize(path) == 0 else "not a PyTorch checkpoint file"
        try:
            unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
        except Exception:  # noqa: BLE001 (a zip file, but not one torch.save wrote)
            unsafe = []
        if unsafe:
            return f"its pickle would run code: {', '.join(unsafe)}"
    first = str(error).strip().splitlines()[0][:100] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def save_json(obj, path):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def record_timing(out_dir, name, t0):
    """Adds `name: {wall_s, cpu_s}` to out_dir/timing.json (the demo's per-stage table): seconds
    since t0, and the CPU seconds (user + system, every thread) of this process and of the worker
    processes it has waited for, so that a run on another machine can be scaled by its cores."""
    path = Path(out_dir) / "timing.json"
    cpu = sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:  # runs that end together (make -j) add both
        fcntl.flock(lock, fcntl.LOCK_EX)
        timing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        timing[name] = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu, 1)}
        save_json(timing, path)
