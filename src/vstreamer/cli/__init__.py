"""The ``vstreamer`` command: chat, personas, vLLM launch, moderation."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from vstreamer.cli import chat, personas, serve, ui, vllm
from vstreamer.config import Settings
from vstreamer.errors import VStreamerError
from vstreamer.logs import configure_logging

__all__ = ["main"]


def _settings_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override VSTREAMER_* environment and the config file)")
    group.add_argument("--config", help="TOML settings file (default: $VSTREAMER_CONFIG)")
    group.add_argument("--backend", choices=["local", "openai", "fake"], help="LLM backend (default: local)")
    group.add_argument("--base-url", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1")
    group.add_argument("--model", help="served model name on the OpenAI-compatible server")
    group.add_argument("--model-path", help="GGUF file for the local backend (default: embedded SmolLM2)")
    group.add_argument("--local-model", choices=["smollm2", "qwen2.5-0.5b"], help="embedded model to use")
    group.add_argument("--persona", help="persona id or name")
    group.add_argument("--max-tokens", type=int, help="longest reply in tokens")
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-p", type=float)
    group.add_argument("--context-window", type=int, help="model context size in tokens")
    group.add_argument("--data-dir", help="where personas, models and databases are kept")


def load_settings(args: argparse.Namespace) -> Settings:
    names = ("backend", "base_url", "model", "model_path", "local_model", "persona", "max_tokens",
             "temperature", "top_p", "context_window", "data_dir")  # fmt: skip
    overrides = {name: getattr(args, name, None) for name in names}
    return Settings.load(getattr(args, "config", None), **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vstreamer", description="LLM virtual streamer (虚拟主播)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat_parser = commands.add_parser("chat", help="chat with a persona in the terminal")
    _settings_options(chat_parser)
    chat_parser.set_defaults(handler=lambda a: chat.run(load_settings(a)))

    personas.add_commands(commands, _settings_options, load_settings)
    vllm.add_commands(commands, _settings_options, load_settings)
    ui.add_commands(commands, _settings_options, load_settings)
    serve.add_commands(commands, _settings_options, load_settings)

    moderate = commands.add_parser("moderate", help="moderate messages from stdin, one JSON result per line",
                                   add_help=False)  # fmt: skip
    moderate.set_defaults(handler=None)
    return parser


def _verbosity(flag: str) -> int:
    """How much a global flag before ``moderate`` raises the logging (``-v``, ``-vv``, ``--verbose``)."""
    if flag == "--verbose":
        return 1
    return flag.count("v") if flag.startswith("-") and set(flag[1:]) == {"v"} else 0


BROKEN_PIPE_STATUS = 141
"""The status of a command whose reader went away (``vstreamer personas show nova | head -5``): 128 + SIGPIPE, what
the shell reports for ``cat`` or ``grep`` ended the same way, so a ``pipefail`` script treats it as theirs; neither
the chat's 1 (a message got no reply) nor an error's 2."""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at exit: a reader gone by then gave an "Exception ignored" message
    except BrokenPipeError:
        logging.getLogger("vstreamer").debug("standard output closed", exc_info=True)
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    return status


def _silence_stdout() -> None:
    """Point standard output at the null device: Python flushes it at exit, and writing into the closed pipe again
    printed a second error (the recipe of Python's ``signal`` documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a standard output without a file descriptor (a test's capture, say)
        pass


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # ``moderate`` takes its own options: everything after it is its own (global -v flags may come before it).
    first = next((i for i, arg in enumerate(args_list) if not arg.startswith("-")), None)
    if first is not None and args_list[first] == "moderate":
        from vstreamer.safety.cli import run_moderate

        configure_logging(sum(_verbosity(arg) for arg in args_list[:first]))
        return run_moderate(args_list[first + 1 :], sys.stdin, sys.stdout)
    parser = build_parser()
    args = parser.parse_args(args_list)
    configure_logging(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except VStreamerError as exc:
        logging.getLogger("vstreamer").debug("command failed", exc_info=True)
        print(f"错误 / error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (a model still loading, say)
        print("\n（已取消 / cancelled）", file=sys.stderr)
        return 130
