"""How every entry point ends on an error: one paragraph, not a traceback.

    if __name__ == "__main__":
        cli.run(main, "train")        # instead of absl's app.run(main)

The paragraph says what is wrong, where, and the fix (the library's errors are written that
way). Exit status 2 for bad input (config, flags, dataset, checkpoint, a run directory in
use or not writable), 1 for an internal failure (a bug, a diverged run, a full disk), 130
for an interrupt. `--verbose` on the command line, or O2O_VERBOSE=1, also prints the
traceback.

Every entry point also runs `o2o_jax.watchdog` (a message when it stalls with its CPU idle;
`O2O_STALL_MINUTES`).
"""
import ast
import contextlib
import errno
import os
import sys
import traceback

BAD_INPUT = 2
INTERNAL = 1


def verbose_requested(argv=None) -> bool:
    argv = sys.argv if argv is None else argv
    return (any(a in ("--verbose", "--verbose=true", "--verbose=True") for a in argv[1:])
            or os.environ.get("O2O_VERBOSE", "") not in ("", "0"))


def _first_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(exc: BaseException):
    """(exit status, paragraph) for an exception."""
    from o2o_jax import checkpoints, config_checks, finite
    from o2o_jax.data import loader
    from o2o_jax.rundir import RunDirLockedError
    from o2o_jax.rlkit_import import MemberFileError
    try:
        from absl import app, flags
        usage = (app.UsageError, flags.Error)
    except ImportError:   # pragma: no cover
        usage = ()
    if isinstance(exc, FlagError):
        msg = str(exc.args[0])
        if msg[:1] in "'\"" and msg[-1:] == msg[:1]:
            # ml_collections' KeyError text inside an AttributeError: unquote it
            try:
                msg = ast.literal_eval(msg)
            except (ValueError, SyntaxError):
                pass
        fix = ("the config's fields are in configs/base.py, set as "
               "--config.<section>.<field>=<value>; " if "Did you mean" in msg or
               "config" in msg.lower() else "")
        return BAD_INPUT, (f"bad command-line flag: {_first_line(msg)}. Fix the flag ({fix}"
                           "--helpfull lists the flags)")
    if isinstance(exc, finite.NonFiniteError):
        return INTERNAL, str(exc)
    if isinstance(exc, checkpoints.CheckpointSaveError):
        return INTERNAL, str(exc)
    if isinstance(exc, (config_checks.ConfigError, loader.DatasetError,
                        loader.DatasetNotFoundError, checkpoints.CheckpointError,
                        RunDirLockedError, MemberFileError) + usage):
        return BAD_INPUT, _first_line(str(exc), 2000)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                         errno.EISDIR, errno.ENOENT):
            return BAD_INPUT, (f"cannot write or read{where}: {exc.strerror}. Check the "
                               "path, or choose a folder you can write (--config.run_dir, "
                               "MINARI_DATASETS_PATH, --out)")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return INTERNAL, (f"the disk is full{where}. Free some space and run the same "
                              "command again: a run resumes from its last checkpoint")
        return INTERNAL, f"{type(exc).__name__}{where}: {_first_line(exc.strerror or exc)}"
    if isinstance(exc, ValueError):
        # The library's input checks raise ValueError with the fix in the message.
        return BAD_INPUT, _first_line(str(exc), 2000)
    return INTERNAL, (f"internal error: {type(exc).__name__}: {_first_line(exc)}. This is a "
                      "bug: run again with --verbose for the traceback and report it")


def _guarded(call, name: str):
    verbose = verbose_requested()
    try:
        return call()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"{name}: interrupted. Run the same command again to resume from the last "
              "checkpoint", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - every error ends here, as one paragraph
        code, msg = describe(exc)
        if verbose:
            traceback.print_exc()
        print(f"{name}: {msg}" + ("" if verbose else " (--verbose: traceback)"),
              file=sys.stderr)
        sys.exit(code)


class FlagError(ValueError):
    """The command line could not be parsed (an unknown flag, a bad value, a misspelt
    config field)."""


def _parse_flags(argv):
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except Exception as exc:  # noqa: BLE001 - absl and ml_collections raise many types
        msg = exc.args[0] if exc.args else exc
        raise FlagError(msg) from exc


@contextlib.contextmanager
def flag_definitions(name: str):
    """Around flag definitions that parse the command line themselves (ml_collections'
    DEFINE_config_file with a default file applies --config.* overrides at definition):
    a bad flag there is reported like any other."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        err, cause = FlagError(exc.args[0] if exc.args else exc), exc

        def raise_it():
            raise err from cause

        _guarded(raise_it, name)


def run(main, name: str):
    """absl's app.run(main) with errors reported as one paragraph (see the module doc)."""
    from absl import app, flags
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_boolean("verbose", False, "on an error, also print the traceback "
                             "(or set O2O_VERBOSE=1)")
    _guarded(lambda: app.run(_watched(main), flags_parser=_parse_flags), name)


def run_argparse(main, name: str):
    """sys.exit(main()) for an argparse entry point, errors as one paragraph; main must
    accept (and ignore) --verbose."""
    sys.exit(_guarded(_watched(main), name))


def _watched(main):
    """`main` started with the stall watchdog (`o2o_jax.watchdog`: a message when the run
    stalls with its CPU idle; O2O_STALL_MINUTES)."""
    def watched(*args):
        from o2o_jax import watchdog
        watchdog.start_from_env()
        return main(*args)

    return watched
