"""
Everything that touches disk, in one place (as nanochat keeps checkpoint_manager.py apart from gpt.py):
atomic writes, a run's folder (its checkpoint, its log, the rules for starting over and resuming) and
checkpoints themselves (saving, reading back, rebuilding a model, the checks on every load).

The guarantees, written once here and used by every script:
- A file is replaced atomically: a kill at any moment leaves the old file or the new one, never a torn
  one (atomic_write); the temporary files of a killed writer are removed later (remove_stale_partials).
- A failed write (full disk, bad path) is one line naming the path and saying what was kept.
- Checkpoints hold plain data only (torch.load(weights_only=True) reads them; no pickle code ever runs),
  a stored frozen table is verified against its fingerprint, and every load refuses non-finite weights.
- A model is used only with the tokenizer it was trained with (check_tokenizer).
- A Ctrl-C during a checkpoint write takes effect once the write is done.
"""
import contextlib
import errno
import hashlib
import json
import os
import signal
import tempfile
import threading
import warnings
from dataclasses import asdict, fields

import numpy as np
import torch

from common import fail, first_line, shown
from model import GPT, GPTConfig, MergedGPT

LOG_NAME = "log.jsonl"  # a run's log in its out_dir: one JSON object per line


# -----------------------------------------------------------------------------
# atomic files

@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """`with atomic_write(path) as f:` writes a temporary file next to `path`, flushes it to disk and
    renames it over `path`, then flushes the folder's entry; an exception leaves `path` as it was and
    removes the temporary file, and a failed write (full disk, a path under a file, a name too long)
    is one OSError line naming the path. A process killed meanwhile leaves .<name>.<pid>.partial,
    which remove_stale_partials(path) deletes."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        os.makedirs(d, exist_ok=True)
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except (OSError, UnicodeEncodeError) as e:  # the disk, or text UTF-8 cannot hold (a lone surrogate)
        raise write_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_error(path, e, kept=None):
    """The one-line OSError of a failed write: what went wrong, and what is on disk now (kept: say it
    instead, e.g. for a folder)."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {first_line(e)}"
    if isinstance(e, (FileExistsError, NotADirectoryError)):  # makedirs or open under a file
        reason = "a folder on its path is a file"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        reason += " (disk full)"
    if kept is None:
        kept = f"the previous {path} is intact" if os.path.isfile(path) else f"nothing was written to {path}"
    return OSError(f"could not write {shown(path)}: {reason}" + (f"; {kept}" if kept else ""))


def write_json(path, obj):
    """A JSON result file, written atomically (UTF-8, readable indentation)."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)


def remove_stale_partials(path):
    """Remove the temporary files of atomic_write(path) left by processes killed while writing."""
    d = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    for name in os.listdir(d) if os.path.isdir(d) else []:
        pid = name[len(prefix):-len(".partial")]
        if name.startswith(prefix) and name.endswith(".partial") and pid.isdigit() and not pid_alive(int(pid)):
            os.remove(os.path.join(d, name))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def ctrl_c_after_saving():
    """A Ctrl-C during a checkpoint write takes effect once the write is done: torch.save turns an
    interrupt inside its zip writer into another error, and a save is quick to finish anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


# -----------------------------------------------------------------------------
# a run's folder: its checkpoint, its log, starting over and resuming

def run_checkpoint(out_dir):
    """A run's resumable checkpoint (written at every evaluation, read by --init_from=resume)."""
    return os.path.join(out_dir, "ckpt.pt")


def open_run(cfg, overrides, mid_run_keys, ckpt_path):
    """-> (config, checkpoint dict or None): where a run starts, its checkpoint read once.
    'scratch': nothing, and an out_dir holding another run is refused unless overwrite is set.
    'resume': ckpt_path, with the run's own settings; the overrides may change only mid_run_keys.
    any other init_from: that checkpoint's weights (a fresh optimizer and count)."""
    has_ckpt = os.path.exists(ckpt_path)
    has_log = os.path.exists(os.path.join(os.path.dirname(ckpt_path), LOG_NAME))
    if cfg["init_from"] == "scratch":
        if has_ckpt and not cfg["overwrite"]:
            raise ValueError(f"out_dir={cfg['out_dir']} holds a run ({os.path.basename(ckpt_path)}): continue it with "
                             f"--init_from=resume, or start over with --overwrite=True (its files are replaced at "
                             f"the new run's first checkpoint)")
        if has_log and not cfg["overwrite"]:
            raise ValueError(f"out_dir={cfg['out_dir']} holds the log of a run that stopped before its first "
                             f"checkpoint (nothing to resume): start over with --overwrite=True")
        return cfg, None
    if cfg["init_from"] != "resume":
        return cfg, read_checkpoint(cfg["init_from"])
    if not has_ckpt:
        if has_log:
            raise ValueError(f"init_from='resume' but there is no checkpoint at {ckpt_path}: the run stopped before "
                             f"its first checkpoint (nothing to resume); start over with --overwrite=True")
        raise ValueError(f"init_from='resume' but there is no checkpoint at {ckpt_path}"
                         f"{missing_checkpoint_hint(ckpt_path)}")
    ckpt = read_checkpoint(ckpt_path)
    arch = {k: v for k, v in (ckpt.get("model_args") or {}).items() if k != "block_size"}
    saved = {**(ckpt.get("config") or {}), **arch}
    changed = [k for k, v in overrides.items() if k in saved and k not in mid_run_keys and saved[k] != v]
    if changed:
        raise ValueError(f"{ckpt_path} is resumed with its own settings, but " +
                         ", ".join(f"{k}={overrides[k]!r} (the run has {saved[k]!r})" for k in changed) +
                         f": a resumed run may change only {', '.join(mid_run_keys)}; start a new run "
                         f"(another out_dir) for the rest")
    return type(cfg)({**cfg, **{k: v for k, v in saved.items() if k in cfg}, **overrides}), ckpt


LOCK_NAME = ".lock"  # in an out_dir while a run owns it: the owner's pid


def make_out_dir(out_dir, create=True):
    """The one out_dir rule: a folder (not a file) that can be made; -> whether this call made it."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        fail(f"out_dir={out_dir} is a file, not a folder")
    if not create or os.path.isdir(out_dir):
        return False
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        fail(f"out_dir={out_dir}: cannot create it ({e.strerror})")
    return True


@contextlib.contextmanager
def hold_out_dir(out_dir):
    """A run owns its out_dir while it runs: out_dir/.lock holds the owner's pid, and a second run (or a
    resume) on a held out_dir is refused in one line naming the holder. A lock whose owner is dead
    (killed) is taken over. Released on exit; an out_dir created here and left empty (the run failed on
    a bad input) is removed again. Under torchrun only rank 0 takes it."""
    if int(os.environ.get("RANK", 0)) != 0:
        yield
        return
    created = make_out_dir(out_dir)
    path = os.path.join(out_dir, LOCK_NAME)
    mine = f"{path}.{os.getpid()}.partial"
    try:
        with open(mine, "w", encoding="utf-8") as f:  # the pid is in the file before it is the lock
            f.write(str(os.getpid()))
        while True:
            try:
                os.link(mine, path)  # atomic: fails if another run holds the lock
                break
            except FileExistsError:
                pid = read_pid(path)
                if pid and pid != os.getpid() and pid_alive(pid):
                    raise ValueError(f"out_dir={out_dir} is in use by process {pid} (its {path}): wait for that "
                                     f"run to end, or use another out_dir") from None
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # its owner is dead: take it over
    except OSError as e:
        raise ValueError(f"out_dir={out_dir} is not writable ({e.strerror})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(mine)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if read_pid(path) == os.getpid():
                os.remove(path)
        if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)


def read_pid(path):
    """The pid written in a lock file (0 when it is empty or unreadable: being written, or damaged)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


class RunLog:
    """out_dir/log.jsonl. A resumed run first drops the lines of the iterations it is about to redo
    (and a torn last line); a fresh run over an old run's log holds its lines in memory until its
    first checkpoint replaces the old run (commit), so nothing of the old run is lost before then."""

    def __init__(self, path, resumed_at=None):
        self.path, self.held = path, None
        if resumed_at is not None:
            self.truncate(resumed_at)
        elif os.path.exists(path):
            self.held = []

    def write(self, rec):
        line = json.dumps(rec) + "\n"
        if self.held is not None:
            self.held.append(line)
        else:
            append_line(self.path, line)

    def commit(self):
        """The new run's first checkpoint is written: its log replaces the old run's."""
        if self.held is not None:
            with atomic_write(self.path) as f:
                f.writelines(self.held)
            self.held = None

    def truncate(self, iter_num):
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        keep = []
        for n, line in enumerate(lines, 1):
            try:
                rec = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) and n == len(lines):
                print(f"{self.path}: dropped its torn last line {n} (the run was killed while writing it)")
                break
            if not isinstance(rec, dict):
                raise ValueError(f"{self.path}: line {n} is not a JSON object; fix or remove that line to resume")
            if rec and rec.get("iter", 0) < iter_num:
                keep.append(line)
        with atomic_write(self.path) as f:
            f.writelines(keep)


class RunFolder:
    """A training run's out_dir while it runs: created (or refused in one line) before the first
    iteration, the temporary files of a save that was killed removed, its log (RunLog) and its
    checkpoint. Only the master process writes (the other DDP ranks get a folder that writes nothing)."""

    def __init__(self, out_dir, ckpt_path, resumed_at=None, master=True):
        self.ckpt_path, self.master, self.last_saved = ckpt_path, master, resumed_at
        if not master:
            return
        make_out_dir(out_dir)
        make_out_dir(os.path.dirname(os.path.abspath(ckpt_path)))
        if not os.access(out_dir, os.W_OK):
            fail(f"out_dir={out_dir} is not writable")
        remove_stale_partials(ckpt_path)
        self.log = RunLog(os.path.join(out_dir, LOG_NAME), resumed_at)

    def kept(self):
        """What a run that stops now leaves behind, for its last line."""
        if self.last_saved is None:
            return "nothing was saved"
        return f"{self.ckpt_path} (iteration {self.last_saved}) is kept"

    def write(self, rec):
        if self.master:
            self.log.write(rec)

    def save(self, ckpt, it):
        if self.master:
            save_checkpoint(ckpt, self.ckpt_path)
            self.last_saved = it
            self.log.commit()


def check_output(out, inputs, key="out", overwrite=None, file_name=None):
    """Before any work, where a script will write: never onto an input [(what, path), ...] (by any path,
    symlink or hard link) nor a folder holding one; with file_name (the name to suggest), a file path,
    not a folder; somewhere a file can be made (its nearest existing folder is a folder that takes a new
    file: never an hour of work, then a failed write); an existing output replaced only with overwrite
    (None: the caller has a rule of its own). One line each."""
    real = os.path.realpath(out)
    for what, p in inputs:
        if not p or not os.path.exists(p):
            continue
        if os.path.realpath(p) == real or (os.path.exists(out) and os.path.samefile(out, p)):
            fail(f"{key}={shown(out)} is the {what} {shown(p)}: writing there would destroy it; choose another --{key}")
        if os.path.realpath(p).startswith(real.rstrip(os.sep) + os.sep):
            fail(f"{key}={shown(out)} holds the {what} {shown(p)}: replacing it would delete it; choose another --{key}")
    if file_name and (os.path.isdir(out) or str(out).endswith(("/", os.sep))):
        fail(f"{key}={shown(out)} is a folder: expected a file path (e.g. --{key}={shown(os.path.join(out, file_name))})")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        fail(f"{key}={shown(out)}: {shown(parent)} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        fail(f"{key}={shown(out)}: cannot write in {shown(parent)} ({e.strerror or e})")
    if overwrite is False and os.path.exists(out):
        fail(f"{key}={shown(out)} exists: pass --overwrite=True to replace it, or choose another --{key}")


def append_line(path, line):
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as e:
        raise write_error(path, e) from None


def read_json(path, what):
    """A JSON file -> its object, or one line naming the file and what it should have been (missing or
    unreadable, not UTF-8, not JSON, nested too deep)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        fail(f"{shown(path)}: not UTF-8 text ({e.reason} at byte {e.start}), so not {what}")
    except (ValueError, RecursionError) as e:  # JSONDecodeError, a 5,000-digit integer, nesting too deep
        fail(f"{shown(path)}: not JSON ({str(e)[:100] or type(e).__name__}), so not {what}")
    except OSError as e:
        fail(f"{shown(path)}: cannot read it ({e.strerror or e}), so not {what}")


def read_jsonl(path):
    """The records of a JSON-lines file ([] when there is none); a line that is not JSON is one line
    naming the file and the line."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    records = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as e:
                fail(f"{shown(path)}: line {n} is not JSON ({first_line(e)}); fix or remove that line")
    return records


# -----------------------------------------------------------------------------
# a growth's folder (grow.py): stage_{i}.pt in order, the schedule they were grown with, their log

def finished_stages(out_dir, n_stages):
    """The stages 1..n_stages whose stage_{i}.pt is in out_dir."""
    return [i for i in range(1, n_stages + 1) if os.path.exists(os.path.join(out_dir, f"stage_{i}.pt"))]


def growth_stages_done(out_dir, schedule, n_stages):
    """-> number of completed stages. Refuses an out_dir grown with another schedule."""
    path = os.path.join(out_dir, "grow_schedule.json")
    done = finished_stages(out_dir, n_stages)
    started = done or any(os.path.exists(run_checkpoint(os.path.join(out_dir, f"stage_{i}"))) for i in range(1, n_stages + 1))
    if started and os.path.exists(path):
        old = read_json(path, "a grow.py schedule")
        for k in sorted(set(old) | set(schedule)):
            if old.get(k) != schedule.get(k):
                fail(f"{path}: resuming with a changed schedule: {k} was {old.get(k)!r}, now {schedule.get(k)!r} "
                     f"(use a new out_dir to grow differently)")
    elif started:
        fail(f"{out_dir}: has stage checkpoints but no grow_schedule.json: not a grow.py out_dir")
    if done != list(range(1, len(done) + 1)):
        fail(f"{out_dir}: stage checkpoints {done} are not the first stages in order (a stage file is missing)")
    return len(done)


def growth_reports(out_dir, stages):
    """The reports of the given finished stages (numbers): each stage's latest line of grow_log.jsonl,
    so a stage that was deleted and trained again is reported once, as it is now."""
    latest = {r.get("stage"): r for r in read_jsonl(os.path.join(out_dir, "grow_log.jsonl"))}
    return [latest[i] for i in stages if i in latest]


# -----------------------------------------------------------------------------
# checkpoints: plain data, written atomically, verified on every load

def table_fingerprint(t):
    """16 hex chars of sha256 of the float32 bytes: the integrity of one stored copy (a file, a
    checkpoint), not the table's identity across machines (that is the substrate key)."""
    a = np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
    return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()[:16]  # no 2nd copy of a big table


def all_finite(t, chunk=8192):
    """torch.isfinite(t).all(), a block of rows at a time: on a whole 2 GB table its temporaries
    took another 3.5 GB."""
    if not t.is_floating_point():
        return True
    if t.dim() == 0:
        return bool(torch.isfinite(t))
    return all(bool(torch.isfinite(t[i:i + chunk]).all()) for i in range(0, t.shape[0], chunk))


def check_finite(weights, where):
    """Refuse (one line) weights with a NaN or an infinity: saved, they would replace a good file with a
    useless one; loaded, they would give text, scores or merges that mean nothing."""
    bad = [name for name, t in weights.items() if isinstance(t, torch.Tensor) and not all_finite(t)]
    if bad:
        raise ValueError(f"{where}: non-finite weights in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")


_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size)


def check_plain(obj, where="checkpoint"):
    """Only containers, scalars and tensors: what torch.load(weights_only=True) accepts. Checked
    before writing, so a bad object fails at save time, not when someone else loads the file."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(k, where)
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"{where} is a {type(obj).__name__}: checkpoints hold only dicts, lists, "
                        f"scalars and tensors (weights_only loading)")


def save_table(table, info, path):
    """A frozen table file ({'table', 'info'}: glyph_embed's table and its info), written atomically."""
    if not all_finite(table):
        raise ValueError(f"{path}: refusing to save a table with non-finite values")
    with atomic_write(path, "wb") as f:
        torch.save({"table": table, "info": info}, f)


def load_table(path, tokenizer_fp=None):
    """Load a saved table; checks its bytes against the recorded fingerprint (the file is intact),
    that it is finite, and (if given) that it was built for the tokenizer of that fingerprint."""
    try:
        d = torch.load(path, weights_only=True)
        table, info = d["table"], d["info"]
    except Exception as e:
        raise ValueError(f"{path}: not a glyph table file ({type(e).__name__})") from None
    if table_fingerprint(table) != info.get("fingerprint"):
        raise ValueError(f"{path}: table fingerprint {table_fingerprint(table)} != recorded "
                         f"{info.get('fingerprint')} (corrupted file)")
    if not all_finite(table):
        raise ValueError(f"{path}: table has non-finite values")
    if tokenizer_fp is not None and info.get("tokenizer_fingerprint") != tokenizer_fp:
        raise ValueError(f"{path}: built for tokenizer fingerprint {info.get('tokenizer_fingerprint')}, "
                         f"but the tokenizer in use has {tokenizer_fp}")
    return table, info


def save_checkpoint(obj, path):
    """Atomic save (the old file or the new one, never a torn one, flushed to disk); a failed write (a
    full disk) leaves the old one and says so in one line; a Ctrl-C meanwhile waits for the write."""
    check_plain(obj)
    try:
        with ctrl_c_after_saving(), atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:  # torch.save reports a failed write of its zip writer as RuntimeError
        raise write_error(path, e) from None


def model_checkpoint(model, tokenizer=None, table_info=None, **extra):
    """The model part of a checkpoint dict (kind 'gpt'); train.py adds optimizer/iter/RNG/data state."""
    info = dict(table_info if table_info is not None else getattr(model, "table_info", {}))
    state = model.state_dict()
    check_finite(state, "the model is not saved")
    if model.frozen_table is not None:
        fp = table_fingerprint(model.frozen_table)
        if info.get("fingerprint") not in (None, fp):
            raise ValueError(f"table_info says fingerprint {info['fingerprint']}, the model's table is {fp}")
        info["fingerprint"] = fp
    ckpt = dict(kind="gpt", model_args=asdict(model.config),
                model=dict(state),
                tokenizer_name=getattr(tokenizer, "name", None),
                tokenizer_fingerprint=getattr(tokenizer, "fingerprint", None),
                table_info=info)
    ckpt.update(extra)
    return ckpt


def missing_checkpoint_hint(path):
    """What the folder of a missing checkpoint holds instead, e.g. a grow.py run's stage_3.pt."""
    d = os.path.dirname(path) or "."
    if not os.path.isdir(d):
        return f" ({d} does not exist)"
    pts = sorted((f for f in os.listdir(d) if f.endswith(".pt")), key=lambda f: (len(f), f))
    if not pts:
        return f" ({d} holds no .pt file)"
    return f"; {d} holds {', '.join(pts[:6])}{' ...' if len(pts) > 6 else ''}: name one of them, e.g. {os.path.join(d, pts[-1])}"


def read_checkpoint(path, device="cpu"):
    """torch.load(weights_only=True) with one-line errors for a missing/truncated/foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file{missing_checkpoint_hint(path)}")
    try:
        with warnings.catch_warnings():  # torch warns before failing on non-zip files: the error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # zip reader / unpickler errors of a truncated or non-checkpoint file
        msg = str(e)
        if "WeightsUnpickler error:" in msg:  # keep the reason, not torch's paragraph of advice around it
            msg = msg.split("WeightsUnpickler error:", 1)[1]
        first = (msg.strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"{path}: not a readable checkpoint (truncated, corrupt or not written by "
                         f"torch.save of plain data): {first}") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ValueError(f"{path}: not a glyphgpt checkpoint (no 'kind' entry)")
    return ckpt


def check_tokenizer(ckpt, tok, where):
    """A checkpoint is used only with the tokenizer it was trained with: ValueError (one line) else."""
    if not ckpt.get("tokenizer_fingerprint"):
        raise ValueError(f"{where} records no tokenizer fingerprint (saved without its tokenizer), so it "
                         f"cannot be checked against {tok.name!r}")
    if ckpt.get("tokenizer_fingerprint") != tok.fingerprint:
        raise ValueError(f"{where} was trained with tokenizer {ckpt.get('tokenizer_name')!r} "
                         f"({ckpt.get('tokenizer_fingerprint')}), this run uses {tok.name!r} ({tok.fingerprint})")


def model_from_checkpoint(ckpt, device="cpu", path="checkpoint"):
    """Rebuild a GPT from a checkpoint dict, verifying the stored table against its fingerprint."""
    known = {f.name for f in fields(GPTConfig)}
    args = ckpt.get("model_args")
    if not isinstance(args, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{path}: checkpoint has no model_args/model entries")
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"{path}: unknown model_args {sorted(unknown)} (written by a newer model.py?)")
    try:
        config = GPTConfig(**args)  # checks every value
    except ValueError as e:
        raise ValueError(f"{path}: model_args: {e}") from None
    sd = ckpt["model"]
    check_finite(sd, f"{path}: not used")
    table = None
    if config.embedding != "trainable":
        table = sd.get("transformer.wte.weight")
        if table is None:
            raise ValueError(f"{path}: embedding {config.embedding!r} but no frozen table in the checkpoint")
        expected = (ckpt.get("table_info") or {}).get("fingerprint")
        got = table_fingerprint(table)
        if expected is None or got != expected:
            raise ValueError(f"{path}: frozen table fingerprint {got} does not match the recorded "
                             f"{expected} (the table was altered or the checkpoint is damaged)")
    try:
        model = GPT(config, table=None if table is None else table.cpu())
        model.load_state_dict(sd)
    except ValueError as e:  # a table that does not fit model_args
        raise ValueError(f"{path}: {e}") from None
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the recorded model_args: {first_line(e)}") from None
    model.table_info = dict(ckpt.get("table_info") or {})
    return model.to(device)


def merged_from_checkpoint(ckpt, device="cpu", path="merge file"):
    """Rebuild a MergedGPT from a merge file's dict (kind 'merge', written by merge.py)."""
    if ckpt.get("format") != MergedGPT.FORMAT:
        raise ValueError(f"{path}: merge file format {ckpt.get('format')!r}, this model.py reads format {MergedGPT.FORMAT}")
    entries = ckpt.get("experts")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: merge file has no experts")
    table = ckpt.get("table")
    experts = []
    for i, ent in enumerate(entries):
        if ent.get("tokenizer_fingerprint") != ckpt.get("tokenizer_fingerprint"):
            raise ValueError(f"{path}: expert {i} has tokenizer fingerprint {ent.get('tokenizer_fingerprint')}, "
                             f"the merge records {ckpt.get('tokenizer_fingerprint')}")
        sd = dict(ent["model"])
        if table is not None:
            sd["transformer.wte.weight"] = table
        sub = dict(kind="gpt", model_args=ent["model_args"], model=sd, table_info=ent.get("table_info"))
        experts.append(model_from_checkpoint(sub, "cpu", f"{path} (expert {i})"))  # verifies the table fingerprint
    try:
        model = MergedGPT(experts, ckpt.get("weights"), ckpt.get("mode", "logits"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return model.to(device)


def load_model(path, device="cpu"):
    """-> (model in eval mode, checkpoint dict). Accepts single models (kind 'gpt') and merged
    models (kind 'merge', written by merge.py)."""
    ckpt = read_checkpoint(path, device)
    kind = ckpt["kind"]
    try:
        if kind == "gpt":
            model = model_from_checkpoint(ckpt, device, path)
        elif kind == "merge":
            model = merged_from_checkpoint(ckpt, device, path)
        else:
            raise ValueError(f"{path}: unknown checkpoint kind {kind!r} (expected 'gpt' or 'merge')")
    except (KeyError, TypeError, AttributeError, IndexError) as e:  # plain data of an unexpected shape
        raise ValueError(f"{shown(path)}: cannot load as a glyphgpt model ({type(e).__name__}: {first_line(e)})") from None
    model.eval()
    return model, ckpt
