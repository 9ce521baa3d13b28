"""Command-line options common to both servers, each also settable from an environment variable."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from . import __version__
from .connection import WRITE_TIMEOUT
from .graceful_stop import STOP_GRACE

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose options take their default from `<PREFIX><OPTION>` in the environment.

    `--idle-unload` of the ASR server reads `QWEN_ASR_IDLE_UNLOAD`, for instance. Docker users set
    options this way; the command line still wins.
    """

    def __init__(self, *args: Any, env_prefix: str, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.env_prefix = env_prefix
        self._append_defaults: dict[str, list] = {}

    def env_name(self, flag: str) -> str:
        return self.env_prefix + flag.lstrip("-").replace("-", "_").upper()

    def add_argument(self, *flags: str, **kwargs: Any):  # type: ignore[override]
        long_flags = [f for f in flags if f.startswith("--")]
        if long_flags and kwargs.get("action") not in ("version", "help"):
            name = self.env_name(long_flags[0])
            raw = os.environ.get(name)
            if raw is not None and raw != "":
                try:
                    value = _from_env(raw, kwargs)
                except ValueError as err:
                    self.error(f"{name}={raw!r}: {err}")
                if kwargs.get("action") == "append":
                    # argparse appends to a list default; apply it only when the flag is absent
                    dest = kwargs.get("dest") or long_flags[0].lstrip("-").replace("-", "_")
                    self._append_defaults[dest] = value
                else:
                    kwargs["default"] = value
            help_text = kwargs.get("help", "")
            if help_text is not argparse.SUPPRESS:
                kwargs["help"] = f"{help_text} [env {name}]".strip()
        return super().add_argument(*flags, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        for dest, value in self._append_defaults.items():
            if getattr(namespace, dest, None) is None:
                setattr(namespace, dest, list(value))
        return namespace, extras


def _from_env(raw: str, kwargs: dict[str, Any]) -> Any:
    """The option's value from its environment variable; ValueError says what would be accepted."""
    action = kwargs.get("action")
    word = raw.strip().lower()
    if action in ("store_true", "store_false"):
        if word not in _TRUE | _FALSE:
            raise ValueError(f"expected one of {', '.join(sorted(_TRUE | _FALSE))}")
        return (word in _TRUE) == (action == "store_true")
    if action == "append":
        # several values: separated by commas or the OS path separator
        parts = [p.strip() for p in raw.replace(os.pathsep, ",").split(",")]
        convert = kwargs.get("type", str)
        return [convert(p) for p in parts if p]
    if kwargs.get("nargs") == "?":  # a switch with an optional value, such as --zeroconf [NAME]
        if word in _TRUE:
            return kwargs.get("const")
        if word in _FALSE:
            return kwargs.get("default")
    convert = kwargs.get("type")
    value = convert(raw) if convert else raw
    if kwargs.get("choices") is not None and value not in kwargs["choices"]:
        raise ValueError(f"expected one of {', '.join(map(str, kwargs['choices']))}")
    return value


def server_parser(kind: str, default_port: int, description: str, model_help: str) -> EnvArgumentParser:
    """The parser of `wyoming-qwen-<kind>` with the options every server has; options read
    `QWEN_<KIND>_<OPTION>` from the environment."""
    parser = EnvArgumentParser(prog=f"wyoming-qwen-{kind}", description=description, env_prefix=f"QWEN_{kind.upper()}_")
    add_common_options(parser, default_port=default_port)
    parser.add_argument("--model", default="auto", help=model_help)
    return parser


def add_common_options(parser: EnvArgumentParser, *, default_port: int) -> None:
    """Options every server has, named as in wyoming-piper and wyoming-faster-whisper."""
    parser.add_argument("--uri", default=f"tcp://0.0.0.0:{default_port}", help="unix:// or tcp://")
    parser.add_argument(
        "--data-dir",
        action="append",
        default=None,
        help="Directory with downloaded models; the first one also receives downloads (repeatable)",
    )
    parser.add_argument(
        "--local-files-only",
        action="store_true",
        help="Never download: use only models already in --data-dir or the Hugging Face cache",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: float32 on CPU; on CUDA bfloat16 where the GPU computes it natively (Ampere and newer), "
        "else float16",
    )
    parser.add_argument(
        "--quantize",
        default="auto",
        choices=["auto", "none", "int8"],
        help="int8: the transformer decoders' weights in int8, several times faster on a CPU (accuracy not "
        "measured with trained weights); auto: int8 on CPU, none on CUDA",
    )
    parser.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="On CUDA, run every decoder step from Python instead of replaying the steps captured as CUDA graphs "
        "at load time (slower; for debugging). No effect on a CPU",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="Threads the models compute with on a CPU (0: every CPU this process may use, cgroup quota included)",
    )
    parser.add_argument(
        "--cpu-wait",
        default="passive",
        choices=["passive", "brief", "active"],
        help="What compute threads do while they wait for each other: passive sleeps at once, so a busy machine "
        "stays usable; brief spins some microseconds first; active spins long, fastest only where no other "
        "process wants the cores (see the README's 'A busy CPU')",
    )
    parser.add_argument(
        "--int8-kernel",
        default="fbgemm",
        choices=["fbgemm", "int_mm"],
        help="How int8 products run on a CPU: fbgemm is 1.5-2x as fast per decode step but packs its weights "
        "at each load (2-5 s per 0.6B model); int_mm reads the cached int8 weights as they are. fbgemm falls "
        "back to int_mm where it is not available (ARM). See the README's 'int8 on a CPU'",
    )
    parser.add_argument(
        "--int8-packing",
        default="background",
        choices=["background", "load"],
        help="When fbgemm's int8 weights are packed: in the background while the first requests are served "
        "through int_mm (a worker start answers 2-5 s sooner), or before serving (every reply rounds the "
        "same, the first ones included)",
    )
    parser.add_argument(
        "--idle-unload",
        type=float,
        default=300.0,
        help="Seconds without a request before the worker goes to standby: the model stays loaded and its "
        "weights become file pages the system may reclaim, so the next request needs no load "
        "(0: after every request, -1: never). With --no-gateway the model is unloaded instead",
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=-1.0,
        help="Seconds in standby before the worker process exits, handing back all its memory (0: exit at "
        "--idle-unload instead of standby, -1: only when memory runs short)",
    )
    parser.add_argument("--preload", action="store_true", help="Load the model at start-up")
    parser.add_argument(
        "--max-loaded-models",
        type=int,
        default=0,
        help="Keep at most this many models loaded; the least recently used goes first (0: no limit)",
    )
    parser.add_argument(
        "--spare-worker",
        action="store_true",
        help="Keep a worker process that has done its imports but holds no model, at start-up and after each "
        "worker exit, so that a cold request waits only for the model load (costs that process's memory, "
        "several hundred MiB; see the README's cold-start table)",
    )
    parser.add_argument(
        "--no-gateway",
        action="store_true",
        help="Serve in this process (no worker process; memory is not handed back when idle). For debugging",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        help="An error is sent when the worker says nothing this long while a client waits for it (a model "
        "still loading is waited for); a worker whose inference then shows no progress is restarted",
    )
    parser.add_argument(
        "--write-timeout",
        type=float,
        default=WRITE_TIMEOUT,
        help="A client that takes no reply bytes for this long is disconnected and its request cancelled",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=STOP_GRACE,
        help="On SIGTERM (docker stop, an add-on restart): seconds that requests under way get to finish; "
        "what cannot finish gets an error. No new connections are taken meanwhile",
    )
    parser.add_argument(
        "--http",
        default=None,
        metavar="tcp://HOST:PORT",
        help="Also serve an OpenAI-compatible HTTP API here (off by default; see the README's 'OpenAI-compatible "
        "API'), on the same worker and models as the Wyoming port",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="The HTTP API asks for this key as a Bearer token (default: none; anyone who reaches the port may use it)",
    )
    parser.add_argument(
        "--api-key-file", default=None, help="A file whose first line is the HTTP API key (for Docker secrets)"
    )
    parser.add_argument(
        "--zeroconf",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="Advertise the server over mDNS for Home Assistant discovery (optional instance name)",
    )
    parser.add_argument(
        "--zeroconf-address", default=None, help="Address to advertise (default: the bind address or detected)"
    )
    parser.add_argument(
        "--zeroconf-interface",
        action="append",
        default=None,
        help="Interface address mDNS uses (repeatable; default: all)",
    )
    # set by the gateway for the worker process it starts: the gateway's PID
    parser.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", help="Log DEBUG messages")
    parser.add_argument("--log-format", default=logging.BASIC_FORMAT, help="Format of log messages (Python logging)")
    parser.add_argument("--version", action="version", version=__version__)


def setup_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format=args.log_format)
    if not args.debug:
        # the HTTP and file-lock libraries under the hub download log every request at INFO; their
        # warnings still show
        for name in ("httpx", "urllib3", "filelock"):
            logging.getLogger(name).setLevel(logging.WARNING)
