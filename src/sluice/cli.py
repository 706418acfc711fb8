"""The ``sluice`` command: serve | sim | bench | keys (create, list, revoke, restore, rotate) | plan | check-config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sluice.clock import MonotonicClock
from sluice.config import (
    DEFAULT_MODEL,
    Dialect,
    EngineSettings,
    ModelSettings,
    Settings,
    SimSettings,
    config_path_from_env,
    load_settings,
)
from sluice.dialects import DIALECT_NAMES
from sluice.errors import ConfigError
from sluice.identity import add_keys_parser
from sluice.plan import add_plan_parser
from sluice.telemetry import limit_repeats

if TYPE_CHECKING:
    from sluice.engines import EngineLauncher

log = logging.getLogger("sluice")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    engine_args: list[str] = []
    if "--" in argv:  # `sluice serve --model M -- --enable-prefix-caching`: the rest goes to the engine
        cut = argv.index("--")
        argv, engine_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    args.engine_args = engine_args
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    args.own_log_handlers = not logging.getLogger().handlers  # else the embedding program's (tests): left as they are
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:  # one problem a line: FILE:LINE: field.path: what is wrong
        problems = str(exc).splitlines()
        heading = "sluice: configuration error" + (f" ({len(problems)} problems):" if len(problems) > 1 else ":")
        print("\n".join([heading, *problems]) if len(problems) > 1 else f"{heading} {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="A traffic controller for LLM inference.")
    sub = parser.add_subparsers(title="commands")

    serve = sub.add_parser("serve", help="run the gateway (no config: the embedded default with a simulated engine)")
    serve.add_argument("--config", help="YAML configuration file (default: $SLUICE_CONFIG, else the embedded default)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--ops-port", type=int, help="serve the admin API and /metrics on this port only "
                       "(default server.ops_port; none: on --port)")
    serve.add_argument("--workers", type=int, help="gateway processes on that port (default server.workers, 1); "
                       "more than one needs state: redis://")
    launch = serve.add_argument_group("launching engines", "start engine servers for a model (args after -- go "
                                      "to the engine)")
    launch.add_argument("--model", help="the model's directory: start engines for it and serve it")
    launch.add_argument("--backend", choices=[*DIALECT_NAMES, "sim", "auto"], default="auto",
                        help="auto: multimodal models go to SGLang, text models to vLLM (read from config.json); "
                             "sim: the built-in simulator (no GPU), speaking vLLM's dialect")
    launch.add_argument("--replicas", type=int, default=1)
    launch.add_argument("--tp", type=int, default=1, help="tensor parallel size of each replica")
    launch.add_argument("--pp", type=int, default=1, help="pipeline parallel size (a replica takes tp*pp GPUs)")
    launch.add_argument("--gpus", help="the GPUs replicas may use, e.g. 0,1,2,3 (default: $CUDA_VISIBLE_DEVICES, "
                                       "else what nvidia-smi lists); each replica gets tp*pp of its own")
    launch.add_argument("--gpu-memory-utilization", type=float,
                        help="fraction of each GPU's memory an engine may take (vLLM, SGLang; refused for LMDeploy)")
    launch.add_argument("--max-model-len", type=int, help="context length (default: config.json's)")
    launch.add_argument("--engine-log-dir", default="sluice-engines",
                        help="directory of the engines' logs, one file per replica (default ./sluice-engines)")
    launch.add_argument("--served-model-name", help="the name clients use (default: the directory's name)")
    launch.add_argument("--engine-python", default=sys.executable,
                        help="the Python of the engine's environment, e.g. /opt/vllm-venv/bin/python")
    launch.add_argument("--engine-timeout", type=float, default=900.0, help="seconds to wait for engines' health")
    launch.add_argument("--dry-run", action="store_true", help="print the engine commands and exit")
    serve.set_defaults(run=_serve)

    sim = sub.add_parser("sim", help="run the engine simulator alone, as an OpenAI-compatible server")
    sim.add_argument("--model", default=DEFAULT_MODEL, help="the model name it serves")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8001)
    _add_model_flags(sim, SimSettings)
    sim.set_defaults(run=_sim)

    bench = sub.add_parser("bench", help="load-test an OpenAI-compatible server (the gateway or an engine)")
    bench.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)")
    bench.add_argument("--model", required=True)
    bench.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    bench.add_argument("--rate", type=float, help="arrivals per second (inf: all at once); omit for a closed loop "
                       "(of 8 users unless --concurrency says)")
    bench.add_argument("--arrival", choices=["poisson", "constant", "burst"], default="poisson")
    bench.add_argument("--burst-size", type=int, default=10, help="requests per burst (--arrival burst)")
    bench.add_argument("--concurrency", type=int, help="users in a closed loop (default 8 without --rate); with "
                       "--rate, the cap in flight")
    bench.add_argument("--fit-span", action="store_true",
                       help="with --rate and --requests: last arrival at exactly requests/rate (as vLLM's benchmark)")
    bench.add_argument("--duration", type=float, help="seconds to send requests for; the requests then in flight "
                       "finish after it (see --drain-timeout)")
    bench.add_argument("--drain-timeout", type=float, default=30.0,
                       help="after --duration: seconds the requests still in flight may take before they are cut "
                            "(default 30); the wall time printed at the end includes it")
    bench.add_argument("--max-failures", type=int, default=20,
                       help="stop early after this many failures before any success, or in a row not counting 429 "
                            "and 503 (default 20; 0: never)")
    bench.add_argument("--requests", type=int, help="requests to send (default 100 without --duration)")
    bench.add_argument("--input-len", default="128",
                       help="N | A-B | lognormal:MEAN:SIGMA[:MAX] | sharegpt | lmsys | alpaca")
    bench.add_argument("--output-len", default="128", help="the same, for max_tokens")
    bench.add_argument("--tenants", help="'name,key=K,weight=W,input=D,output=D;...' or a JSON/YAML file")
    bench.add_argument("--api-key", help="default key (else $SLUICE_API_KEY, $OPENAI_API_KEY)")
    bench.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    bench.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    bench.add_argument("--slo-ttft", type=float, help="goodput SLO: time to first token, seconds")
    bench.add_argument("--slo-tpot", type=float, help="goodput SLO: time per output token, seconds")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    bench.add_argument("--out", help="output directory (default sluice-bench-<UTC time>)")
    bench.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    bench.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar on stderr (default: when it is a terminal)")
    bench.set_defaults(run=_bench)

    add_keys_parser(sub)
    add_plan_parser(sub)

    check = sub.add_parser("check-config", help="validate a configuration file and summarise it")
    check.add_argument("config")
    check.set_defaults(run=_check_config)
    return parser


def _add_model_flags(parser: argparse.ArgumentParser, model: type[SimSettings]) -> None:
    """One flag per settings field (``max_num_seqs`` → ``--max-num-seqs``), typed and described from the model."""
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        if choices:
            parser.add_argument(flag, choices=choices, default=field.default, help=f"(default {field.default})")
        elif name == "max_waiting":
            parser.add_argument(flag, type=int, default=None, help="cap on the waiting queue (503 when full)")
        elif field.annotation == bool | None:  # --x / --no-x, unset: the default the model decides
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help="(default: per dialect)")
        elif field.annotation in (int, float, str):
            parser.add_argument(flag, type=field.annotation, default=field.default, help=f"(default {field.default})")


# A server process allocates and frees many small containers per request. At CPython's default gen-0 threshold (700)
# the collector ran ~100 times a second under load and walked the ~80,000 objects of the imported modules on every
# full collection: 10-12% of a gateway's CPU (the gateways of bench.limiter, measured with gc.callbacks).
GC_GEN0_THRESHOLD = 10_000
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def tune_gc() -> None:
    """Once everything is imported: move the objects alive now out of the collector's sight (``gc.freeze``, as
    vLLM's server does) and collect the young generation less often. Cycles are still collected."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)


def _serve(args: argparse.Namespace) -> int:
    config_path = args.config or config_path_from_env()
    settings = load_settings(config_path)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("ops_port", args.ops_port))
                 if v is not None}
    if overrides:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    _check_ops_port(settings.server.port, settings.server.ops_port)
    if args.workers is not None:
        settings = _with_workers(settings, args.workers)
    launcher = None
    if args.model:
        settings, launcher = _launch_plan(args, settings, config_path is None)
        if launcher is None:
            return 0
    if settings.server.workers > 1:  # a supervisor: it starts the engines once, then the workers
        from sluice.console import create_console_app
        from sluice.gateway._workers import run_workers

        _refuse_launcher_autoscaling(settings)

        return run_workers(settings, config_path=config_path, launcher=launcher, prepare=tune_gc,
                           app_factory=create_console_app)
    # a gateway's repeated lines (Redis down: one per outage, per request) at most twice a minute per kind; not the
    # supervisor's above, whose every line is an event (a worker restarted)
    limiters = limit_repeats(logging.getLogger().handlers, MonotonicClock()) if args.own_log_handlers else []
    try:
        return _serve_one(settings, config_path, launcher)
    finally:
        for limiter in limiters:
            limiter.flush()


def _serve_one(settings: Settings, config_path: str | None, launcher: EngineLauncher | None) -> int:
    """One gateway process: the port bound first (taken: one line, exit 3), the banner once it serves."""
    from sluice.clock import MonotonicClock
    from sluice.console import create_console_app
    from sluice.gateway._banner import announce
    from sluice.gateway._startup import bind_port, serve_then_announce
    from sluice.gateway.server import STARTUP_FAILURE, gateway_server

    host, port = settings.server.host, settings.server.port
    try:
        sock = bind_port(host, port)
    except OSError as exc:
        print(f"sluice: cannot listen on {host}:{port}: {exc.strerror or exc} (another server has that port? "
              "choose another with --port)", file=sys.stderr)
        return STARTUP_FAILURE
    with sock:
        settings = settings.model_copy(update={"server": settings.server.model_copy(
            update={"port": sock.getsockname()[1]})})  # port 0: the one the kernel chose, in the banner
        settings, console_key = _embedded_console_key(settings, config_path)
        app = create_console_app(settings, config_path=config_path, launcher=launcher)
        server = gateway_server(app, settings.server, app.state.metrics)
        tune_gc()
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(  # uvicorn re-raises the Ctrl-C it handled
                loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(serve_then_announce(server, sock, lambda: announce(settings, config_path, console_key),
                                           MonotonicClock()))
    return 0 if server.started else STARTUP_FAILURE


def _embedded_console_key(settings: Settings, config_path: str | None) -> tuple[Settings, str | None]:
    """The embedded default has no admin key, so no console: make one for this run, keep only its hash, and let the
    banner print it once. Only on a loopback address: a gateway opened to the network with ``--host`` keeps its
    console shut until a config sets ``auth.admin_key_hash``."""
    from sluice.identity import generate_key, hash_key

    if config_path is not None or settings.auth.admin_key_hash is not None \
            or settings.server.host not in LOOPBACK_HOSTS:
        return settings, None
    key = generate_key()
    auth = settings.auth.model_copy(update={"admin_key_hash": hash_key(key)})
    return settings.model_copy(update={"auth": auth}), key


def _refuse_launcher_autoscaling(settings: Settings) -> None:
    """Autoscaling launched replicas needs the launcher in the gateway's process; with several workers it is the
    supervisor's, and the workers know the launched replicas as fixed URLs."""
    for model in settings.models:
        if model.autoscale is not None and model.autoscale.actuator == "launcher":
            raise ConfigError(f"model {model.name}: autoscale actuator launcher needs one gateway process "
                              "(--workers 1); with several workers scale the engines with another actuator")


def _check_ops_port(port: int, ops_port: int | None) -> None:
    """What ``server.ops_port`` is checked for in YAML, for ``--port``/``--ops-port`` too."""
    if ops_port is not None and not 1 <= ops_port <= 65535:
        raise ConfigError(f"--ops-port {ops_port}: a port from 1 to 65535")
    if ops_port is not None and ops_port == port:
        raise ConfigError(f"--ops-port {ops_port} is the public port (--port): the operations port must be another")


def _with_workers(settings: Settings, workers: int) -> Settings:
    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1")
    try:
        return settings.with_workers(workers)
    except ValueError as exc:  # memory:// state: the check the YAML field goes through
        raise ConfigError(f"--workers {workers}: {exc}") from exc


def _launch_plan(args: argparse.Namespace, settings: Settings,
                 embedded: bool) -> tuple[Settings, EngineLauncher | None]:
    """The engines ``--model`` asks for, and the settings that route to them (``None`` launcher: dry run)."""
    from pathlib import Path

    from sluice.clock import MonotonicClock
    from sluice.engines import (
        EngineLauncher,
        GpuPool,
        ReplicaPlanner,
        choose_backend,
        context_length,
        launch_gpus,
    )
    from sluice.engines.dialects import LaunchSpec

    for flag, value in (("--replicas", args.replicas), ("--tp", args.tp), ("--pp", args.pp)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: at least 1")
    choice = choose_backend(args.model, args.backend)
    if choice.guessed:
        log.warning("engine backend: %s, a guess: %s", choice.backend, choice.why)
    else:
        log.info("engine backend: %s (%s)", choice.backend, choice.why)
    if choice.backend != "sim" and not Path(args.model).is_dir():
        log.warning("model directory %s does not exist here: the engine will take it as a hub id and download it",
                    args.model)
    name = args.served_model_name or Path(args.model).name
    spec = LaunchSpec(model=args.model, port=0, tp=args.tp, pp=args.pp,
                      gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
                      served_model_name=name, extra_args=tuple(args.engine_args), python=args.engine_python)
    visible = launch_gpus(choice.backend, args.gpus, os.environ)
    gpus = GpuPool(visible)
    if not gpus.enabled and choice.backend != "sim":
        log.info("no GPU visible (%s lists none): replicas get no CUDA_VISIBLE_DEVICES and share what the engine "
                 "runs on", visible.source)
    planner = ReplicaPlanner(choice.backend, spec, gpus)  # type: ignore[arg-type]
    commands = planner.plan(args.replicas)
    if args.dry_run:
        for i, command in enumerate(commands):
            print(f"# replica {i}: {command.url}")
            print(command.shell())
        return settings, None
    entry = _launched_model(name, settings, embedded, planner.dialect, [c.url for c in commands],
                            args.max_model_len or context_length(args.model))
    models = [m for m in settings.models if m.name != name and not embedded] + [entry]
    launcher = EngineLauncher(commands, MonotonicClock(), log_dir=Path(args.engine_log_dir),
                              health_timeout_s=args.engine_timeout, warmup_model=name, planner=planner)
    return settings.model_copy(update={"models": models}), launcher


def _launched_model(name: str, settings: Settings, embedded: bool, dialect: Dialect, urls: list[str],
                    max_model_len: int | None) -> ModelSettings:
    """The launched model's settings: the config's model of that name (admission, autoscale, cache, engine tuning
    kept) with its engine pointed at the launched replicas; a model of its own when the config has none."""
    configured = None if embedded else next((m for m in settings.models if m.name == name), None)
    if configured is None:
        return ModelSettings(name=name, max_model_len=max_model_len,
                             engine=EngineSettings(dialect=dialect, urls=urls))
    engine = configured.engine or EngineSettings(urls=urls)
    if configured.sim is not None or engine.urls or engine.discovery is not None:
        log.warning("model %s: the engines --model launches replace the config's %s; its other settings are kept",
                    name, "simulator" if configured.sim is not None else "engine urls/discovery")
    launched = engine.model_copy(update={"dialect": dialect, "urls": urls, "weights": None, "discovery": None})
    return configured.model_copy(update={"engine": launched, "sim": None,
                                         "max_model_len": configured.max_model_len or max_model_len})


def _sim(args: argparse.Namespace) -> int:
    from sluice.sim import serve_sim

    values = {name: getattr(args, name) for name in SimSettings.model_fields}
    try:
        settings = SimSettings(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    tune_gc()
    asyncio.run(serve_sim(settings, model_name=args.model, host=args.host, port=args.port))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sluice.bench import run_command

    tune_gc()  # the load tester's own pauses would be measured as the server's latency
    return run_command(args)


def _check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    print(f"{args.config}: ok: {len(settings.models)} model(s), {len(settings.tiers)} tier(s), "
          f"{len(settings.keys)} key(s), state {settings.state.split('@')[-1]}, auth {settings.auth.mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
