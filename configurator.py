"""
nanoGPT's configurator idea without its traps. Every script keeps its defaults as plain module-level
assignments, then calls

    config = configure(defaults, sys.argv[1:])

where each argument is either a config file (plain Python assignments, e.g. config/x.py) or
--key=value. Later arguments override earlier ones. What differs from nanoGPT's exec() trick:
- values are parsed by the type of the default, not by literal_eval alone: --weight_decay=0 stays a
  float, --max_iters=1e4 becomes the int 10000, --compile=false is False, --out_dir=a=b keeps "a=b";
- an unknown key (file or command line) fails naming it and the closest known keys;
- a wrong type says which key, which type was expected and what was given.
Errors are ConfigError (a ValueError) with a one-line message; scripts turn it into a clean exit.
"""
import ast
import difflib
import os

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    pass


def _unknown(key, known, where):
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown config key {key!r}{hint}")


def _type_error(key, default, given, where):
    return ConfigError(f"{where}: {key} expects {type(default).__name__} (default {default!r}), "
                       f"got {given!r}")


def coerce(key, default, value, where="config"):
    """Convert `value` (a str from the command line, or a Python object from a config file) to the
    type of `default`."""
    is_text = isinstance(value, str)
    if default is None:  # no type to go by: a literal if it parses as one, else the string
        if is_text:
            try:
                return ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return value
        return value
    if isinstance(default, bool):  # before int: bool is a subclass of int
        if isinstance(value, bool):
            return value
        if is_text and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _type_error(key, default, value, where)
    if isinstance(default, int):
        v = value
        if is_text:
            try:
                v = float(value.replace("_", "")) if any(c in value.lower() for c in ".e") else int(value.replace("_", ""))
            except ValueError:
                raise _type_error(key, default, value, where) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or float(v) != int(v):
            raise _type_error(key, default, value, where)
        return int(v)
    if isinstance(default, float):
        v = value
        if is_text:
            try:
                v = float(value)
            except ValueError:
                raise _type_error(key, default, value, where) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _type_error(key, default, value, where)
        return float(v)
    if isinstance(default, str):
        if is_text:
            return value  # never literal_eval'd: --out_dir=out, --init_from=resume, values with '='
        raise _type_error(key, default, value, where)
    # containers (dict of dataset weights, lists, tuples): a Python literal of the same kind
    v = value
    if is_text:
        try:
            v = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise _type_error(key, default, value, where) from None
    if isinstance(default, tuple) and isinstance(v, list):
        v = tuple(v)
    if not isinstance(v, type(default)):
        raise _type_error(key, default, value, where)
    return v


def read_config_file(path):
    """Run a config file of plain assignments; returns its public top-level names."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    ns = {}
    try:
        with open(path) as f:
            code = compile(f.read(), path, "exec")
        exec(code, ns)
    except Exception as e:
        raise ConfigError(f"{path}: could not run config file: {type(e).__name__}: {e}") from None
    return {k: v for k, v in ns.items()
            if not k.startswith("_") and not callable(v) and type(v).__name__ != "module"}


def configure(defaults, argv, verbose=True):
    """-> a new dict: defaults overridden by config files and --key=value arguments, in order."""
    config = dict(defaults)
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if key not in defaults:
                raise _unknown(key, defaults, "command line")
            if not eq:  # bare --flag: only for booleans
                if not isinstance(defaults[key], bool):
                    raise ConfigError(f"command line: --{key} needs a value (--{key}=...)")
                value = "true"
            config[key] = coerce(key, defaults[key], value, "command line")
            if verbose:
                print(f"Overriding: {key} = {config[key]!r}")
        else:
            for key, value in read_config_file(arg).items():
                if key not in defaults:
                    raise _unknown(key, defaults, arg)
                config[key] = coerce(key, defaults[key], value, arg)
            if verbose:
                print(f"Overriding config with {arg}")
    return config


def defaults_from(namespace):
    """The config keys of a script: its public module-level scalars, strings and containers."""
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str, dict, list, tuple, type(None)))}
