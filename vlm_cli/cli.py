"""The ``vlm`` entry point: a tiny dispatcher that imports a subcommand only when it runs.

``vlm --help`` must answer in well under 0.3 s, so this module imports nothing heavy (not even
typer): the top-level help comes from the :data:`COMMANDS` table, and each subcommand lives in
``vlm_cli.commands.<module>`` (a typer app, installed from the repository's ``commands/``
directory), imported when named on the command line (the pattern of mlx-vlm's ``__main__``).

Errors: a :class:`vlm_cli.errors.VlmError` raised by any command is printed as one line on stderr
(``error: ...``) with its exit code (1 runtime, 2 usage); any other exception is reported the same
way with exit code 1, unless ``--debug`` (or ``VLM_DEBUG=1``) asks for the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from vlm_cli import __version__

#: Subcommand name -> (module under vlm_cli.commands, one-line help). A dict, not a registry.
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("download", "Fetch a dataset (the built-in toy-av world) into a directory."),
    "preprocess": ("preprocess", "Decode clips, run the frozen encoders, fill the feature cache."),
    "pretrain": ("pretrain", "Stage 1: align the connectors on caption pairs."),
    "tune": ("tune", "Stage 2: instruction-tune connectors + LLM (full or LoRA)."),
    "ask": ("ask", "Ask a trained model about a video, image or audio file."),
    "eval": ("eval", "Score a model on a video QA set (MSVD-QA style); predictions + report."),
    "probe": ("probe", "Do answers follow the sound and frame order? Counterfactual variants."),
    "merge-lora": ("merge_lora", "Fold a run's LoRA adapter into its LLM; self-contained."),
    "cache": ("cache", "List, measure, prune or clear the feature cache."),
}

USAGE = "Usage: vlm [--version] [--debug] COMMAND [ARGS]..."


def help_text() -> str:
    """The top-level help: usage, one line per subcommand, global options."""
    width = max(map(len, COMMANDS)) + 2
    lines = [USAGE, "",
             "  vlm: train and run audio-visual language models (Video-LLaMA, Video-LLaVA) on",
             "  local GPUs. Run `vlm COMMAND --help` for a command's options.", "",
             "Commands:"]
    lines += [f"  {name:<{width}}{line}" for name, (_, line) in COMMANDS.items()]
    lines += ["", "Options:",
              f"  {'--version':<{width}}Show the version and exit.",
              f"  {'--debug':<{width}}Show tracebacks for unexpected errors (also VLM_DEBUG=1).",
              f"  {'-h, --help':<{width}}Show this message and exit."]
    return "\n".join(lines)


def _error(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def run(argv: list[str]) -> int:
    """Run ``vlm`` with ``argv`` (without the program name); return the exit code."""
    from vlm_cli.errors import VlmError

    argv = list(argv)
    debug = os.environ.get("VLM_DEBUG") == "1"
    while argv and argv[0].startswith("-"):
        option = argv.pop(0)
        if option in ("-h", "--help"):
            print(help_text())
            return 0
        if option == "--version":
            print(f"vlm {__version__}")
            return 0
        if option == "--debug":
            debug = True
            continue
        return _error(f"no such option: {option} (see `vlm --help`)", 2)
    if not argv:
        print(help_text())
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        return _error(f"no such command {name!r}; commands: {', '.join(COMMANDS)}", 2)
    from vlm_cli.runtime import quiet_third_party

    quiet_third_party()
    try:
        import typer.main  # deferred: typer + rich cost ~0.1 s

        module = importlib.import_module(f"vlm_cli.commands.{COMMANDS[name][0]}")
        command = typer.main.get_command(module.app)
        try:
            command.main(args=args, prog_name=f"vlm {name}", standalone_mode=True)
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        return 0
    except VlmError as err:
        return _error(str(err), err.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except Exception as err:  # an unexpected failure: one line unless --debug
        if debug:
            raise
        return _error(f"internal error: {type(err).__name__}: {err} "
                      "(run `vlm --debug ...` for the traceback)", 1)


def main() -> None:
    """Console-script entry point (``vlm``).

    Once the command has returned, the exit handlers run (``atexit``: multiprocessing's
    cleanup, logging) and the process ends with ``os._exit``, skipping the interpreter's
    teardown of every loaded module: with torch and transformers loaded that teardown takes
    ~1 s of CPU and does nothing a finished command needs (files are closed or flushed by
    then; cache and output files are written atomically before the command returns). The
    decoders' forkserver, if one was started, is ended the same way
    (:func:`vlm_cli.workers.stop_forkserver`).
    """
    code = run(sys.argv[1:])
    _exit_now(code)


def _exit_now(code: int) -> None:
    import atexit

    if "vlm_cli.workers" in sys.modules:  # decoder pools are closed by now
        sys.modules["vlm_cli.workers"].stop_forkserver()
    atexit._run_exitfuncs()  # what sys.exit would run, without the module teardown after it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``vlm ... | head``)
            pass
    os._exit(code)


if __name__ == "__main__":  # python -m vlm_cli.cli
    main()
