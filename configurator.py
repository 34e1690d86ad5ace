"""
nanoGPT's configurator idea without its traps. Every script keeps its defaults as plain module-level
assignments, each with a comment saying what it means, then calls

    config = configure(defaults, sys.argv[1:], docs=key_docs(__file__))

where each argument is a config file (plain Python assignments, e.g. config/x.py), --key=value or
--key value. Later arguments override earlier ones. --help (or -h) prints every key with its default
and its comment: the defaults block is the one place a key is documented. What differs from
nanoGPT's exec() trick:
- values are parsed by the type of the default, not by literal_eval alone: --weight_decay=0 stays a
  float, --max_iters=1e4 becomes the int 10000, --compile=false is False, --out_dir=a=b keeps "a=b";
- an unknown key (file or command line) fails naming it and the closest known keys;
- a wrong type says which key, which type was expected and what was given.
Errors are ConfigError (a ValueError) with a one-line message; scripts turn it into a clean exit.
parse() returns only the keys the arguments set (train.py's resume keeps the run's own settings for
the rest); configure() is the defaults overridden by them.
"""
import ast
import difflib
import io
import os
import sys
import tokenize

from common import first_line, shown

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    pass


class Config(dict):
    """A config dict whose keys also read as attributes (cfg.max_iters), the way nanoGPT reads plain names."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _unknown(key, known, where):
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown config key {key!r}{hint} (--help lists them)")


def _type_error(key, default, given, where):
    return ConfigError(f"{where}: {key} expects {type(default).__name__} (default {default!r}), "
                       f"got {given!r}")


def _literal(text):
    """ast.literal_eval, or ValueError for anything it cannot read (it also raises TypeError,
    MemoryError and RecursionError on odd input)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(text) from None


def _number(text):
    """'3' -> 3 (exact, however long), '1e-3' or '1_000.5' -> float; None when it is no number."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return None


def coerce(key, default, value, where="config"):
    """Convert `value` (a str from the command line, or a Python object from a config file) to the
    type of `default`."""
    is_text = isinstance(value, str)
    if default is None:  # no type to go by: a literal if it parses as one, else the string
        if is_text:
            try:
                return _literal(value)
            except ValueError:
                return value
        return value
    if isinstance(default, bool):  # before int: bool is a subclass of int
        if isinstance(value, bool):
            return value
        if is_text and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _type_error(key, default, value, where)
    if isinstance(default, (int, float)):
        v = _number(value) if is_text else value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _type_error(key, default, value, where)
        if isinstance(default, float):
            return float(v)
        if isinstance(v, float) and not v.is_integer():  # 1e3 is an int, 0.5 and inf are not
            raise _type_error(key, default, value, where)
        return int(v)
    if isinstance(default, str):
        if is_text:
            return value  # never literal_eval'd: --out_dir=out, --init_from=resume, values with '='
        raise _type_error(key, default, value, where)
    # containers (dict of dataset weights, lists, tuples): a Python literal of the same kind
    v = value
    if is_text:
        try:
            v = _literal(value)
        except ValueError:
            raise _type_error(key, default, value, where) from None
    if isinstance(default, tuple) and isinstance(v, list):
        v = tuple(v)
    if not isinstance(v, type(default)):
        raise _type_error(key, default, value, where)
    return v


def read_config_file(path):
    """Run a config file of plain assignments; returns its public top-level names."""
    if not os.path.isfile(path):
        raise ConfigError(f"{shown(path)}: config file not found")
    ns = {"__file__": os.path.abspath(path)}  # so a config can start from another: see config/*_trainable.py
    try:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
        exec(code, ns)
    except Exception as e:
        raise ConfigError(f"{shown(path)}: could not run config file: {type(e).__name__}: {first_line(e)}") from None
    return {k: v for k, v in ns.items()
            if not k.startswith("_") and not callable(v) and type(v).__name__ != "module"}


def parse(defaults, argv, verbose=True, docs=None, prog=None, positional=None):
    """-> the keys that config files and --key=value / --key value arguments set, in order, each
    converted to the type of its default. --help / -h prints the keys with the values the other
    arguments give them (see print_help) and exits.
    positional: a list key that collects the arguments that are neither options nor config files
    (.py), e.g. merge.py's expert checkpoints."""
    if "--help" in argv or "-h" in argv:  # the values the other arguments give (a config file's), then exit
        rest = [a for a in argv if a not in ("--help", "-h")]
        print_help({**defaults, **parse(defaults, rest, False, docs, prog, positional)}, docs or {}, prog)
        raise SystemExit(0)
    config = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if key not in defaults:
                raise _unknown(key, defaults, "command line")
            if not eq:  # --key value, or a bare --flag for booleans (--compile, --compile false)
                is_bool = isinstance(defaults[key], bool)
                if args and not args[0].startswith("--") and (not is_bool or args[0].lower() in _TRUE | _FALSE):
                    value = args.pop(0)
                elif is_bool:
                    value = "true"
                else:
                    raise ConfigError(f"command line: --{key} needs a value (--{key}=... or --{key} ...)")
            config[key] = coerce(key, defaults[key], value, "command line")
            if verbose:
                print(f"Overriding: {key} = {config[key]!r}")
        elif positional and not arg.endswith(".py"):
            config[positional] = list(config.get(positional, defaults[positional])) + [arg]
        else:
            for key, value in read_config_file(arg).items():
                if key not in defaults:
                    raise _unknown(key, defaults, arg)
                config[key] = coerce(key, defaults[key], value, arg)
            if verbose:
                print(f"Overriding config with {arg}")
    return config


def configure(defaults, argv, verbose=True, docs=None, prog=None, positional=None):
    """-> a new Config: defaults overridden by config files and --key=value arguments, in order."""
    return Config({**defaults, **parse(defaults, argv, verbose, docs, prog, positional)})


def defaults_from(namespace):
    """The config keys of a script: its public lower-case module-level scalars, strings and containers
    (an UPPER_CASE name is a constant, e.g. one imported from common.py, never an option)."""
    return {k: v for k, v in namespace.items() if not k.startswith("_") and k == k.lower()
            and isinstance(v, (int, float, bool, str, dict, list, tuple, type(None)))}


def key_docs(*paths):
    """{key: its comment} from the `key = value  # comment` lines at the top level of scripts (later
    paths win): the defaults block of each script documents its keys once, for --help."""
    docs = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        lines = src.splitlines()
        first = {}  # line number -> the first token of a top-level statement starting on it
        for t in tokenize.generate_tokens(io.StringIO(src).readline):
            if t.start[1] == 0 and t.type == tokenize.NAME:
                first.setdefault(t.start[0], t.string)
            elif t.type == tokenize.COMMENT and t.start[0] in first:
                name = first[t.start[0]]
                if lines[t.start[0] - 1].split("=")[0].strip() == name:  # `name = ...  # comment`
                    docs[name] = t.string.lstrip("#").strip()
    return docs


def print_help(defaults, docs, prog=None):
    """Every key, its default, and its one-line meaning."""
    prog = prog or os.path.basename(sys.argv[0])
    print(f"usage: {prog} [config_file.py ...] [--key=value | --key value ...]  (later arguments win)")
    # a string as typed, unless it is empty or holds a newline or odd spaces (start="\n" shows as '\n')
    lines = {k: f"--{k}={shown(v) if isinstance(v, str) else repr(v)}" for k, v in defaults.items()}
    width = max(map(len, lines.values())) + 2
    for key, text in lines.items():
        print(f"  {text:<{width}}{docs.get(key, '')}".rstrip())
