"""``loopwise``: the local stack and the tools around it.

    loopwise up [--root .loopwise] [--only collector,inference,miner]
                                         start broker, Redis, the services (all, or --only these) and
                                         their supervisor
    loopwise status                      what is running and healthy, restarts per service
    loopwise down                        stop everything started by `up`
    loopwise demo [--requests N] [--keep]
                                         sample traffic from MovieLens-100K
    loopwise model list|show|promote|rollback --tenant T --model M [--version V]
                                         model versions: list, manifest, move the serving pointer
    loopwise replay obd [--policy bts|random] [--campaign all|men|women] [--rounds N] [--speedup X]
                                         the Open Bandit sample through a running stack
    loopwise rules list|status|block|unblock [--tenant T] [--source S] [--target S]
                                         live rewrite rules, how far mining has caught up, the blocklist
    loopwise rules evaluate FILE.jsonl   the offline miner on a file of Turn events (JSON lines)
    loopwise simulate assistant --users N --minutes M --seed S [--time-scale X] [--no-pace] [--tenant T]
                                         voice-assistant users through a running stack (Rewrite, Turn events)

``--root`` (default ``$LOOPWISE_HOME`` or ``.loopwise``) goes before or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from loopwise.tools import stack

DEFAULT_ROOT = Path(os.environ.get("LOOPWISE_HOME", ".loopwise"))


def _up(args: argparse.Namespace) -> int:
    try:
        info = stack.up(args.root, tenants=tuple(args.tenants.split(",")), partitions=args.partitions,
                        attribution_window_ms=int(args.attribution_window_s * 1000), only=args.only,
                        auth_keys=not args.no_auth)
    except stack.StackError as exc:
        print(f"loopwise up: {exc}", file=sys.stderr)
        return 1
    print(f"stack up ({info.root}/stack.json)")
    for key in ("collector", "inference", "kafka", "redis"):
        if getattr(info, key):
            print(f"  {key:10} {getattr(info, key)}")
    for name, url in info.metrics.items():
        print(f"  {name + ' metrics':10} {url}")
    print(f"  logs       {info.root}/logs/")
    if info.api_key:
        print(f"  API key    in {info.root}/stack.json (\"api_key\"; clients: LOOPWISE_API_KEY)")
    return 0


def _status(args: argparse.Namespace) -> int:
    parts = stack.status(args.root)
    if not parts:
        print("no stack (loopwise up to start one)")
        return 1
    if args.json:
        print(json.dumps(parts, indent=2))
    ok = True
    for name, entry in parts.items():
        state = "up" if entry["alive"] else "DOWN"
        if entry.get("healthy") is False:
            state = "UNHEALTHY"
        ok &= state == "up"
        if not args.json:
            restarts = f"restarts {entry['restarts']}" if "restarts" in entry else ""
            print(f"{name:10} {state:10} pid {entry['pid']:<8} {restarts:12} {entry['endpoint']}")
    return 0 if ok else 1


def _down(args: argparse.Namespace) -> int:
    stopped = stack.down(args.root)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from loopwise.tools import demo

    return demo.run(args.root, requests=args.requests, keep=args.keep, assistant_rounds=args.assistant_rounds,
                    assistant_users=args.assistant_users, rate=args.rate)


def _replay(args: argparse.Namespace) -> int:
    from loopwise.tools import replay

    return replay.run_obd(args.root, policy=args.policy, campaign=args.campaign, rounds=args.rounds,
                          speedup=args.speedup)


def _simulate(args: argparse.Namespace) -> int:
    from loopwise.tools.simulate import assistant

    return assistant.main_simulate(args)


def _model(args: argparse.Namespace) -> int:
    from loopwise.tools import models_cmd

    return models_cmd.run(args)


def _rules(args: argparse.Namespace) -> int:
    from loopwise.tools import rules_cmd

    return rules_cmd.run(args)


def _keys(args: argparse.Namespace) -> int:
    """``loopwise keys new``: a fresh key and its keys-file entry; ``keys hash``: the entry of a
    key read from standard input (never from the command line, where ``ps`` would show it)."""
    from loopwise import auth

    key = auth.new_key() if args.keys_command == "new" else sys.stdin.readline().strip()
    if not key:
        print("loopwise keys hash: no key on standard input", file=sys.stderr)
        return 1
    if args.keys_command == "new":
        print(f"key   {key}")
    print(f"hash  {auth.hash_key(key)}")
    return 0


def _services(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = sorted(set(names) - set(stack.SERVICES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{value!r}: expected some of {','.join(stack.SERVICES)}")
    return names


def _root_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """Every subcommand (nested too) also takes ``--root``; it overrides the top-level one only
    when given (its default is suppressed)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--root" in a.option_strings for a in sub._actions):
                    sub.add_argument("--root", type=Path, default=argparse.SUPPRESS,
                                     help="stack folder (default .loopwise)")
                _root_after_subcommands(sub)


def build_parser() -> argparse.ArgumentParser:
    """The ``loopwise`` argument parser (every subcommand, ``--root`` before or after it)."""
    parser = argparse.ArgumentParser(prog="loopwise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="stack folder (default .loopwise)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start the local stack")
    p.add_argument("--tenants", default="default")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--attribution-window-s", type=float, default=60.0,
                   help="the miner's attribution window (short locally; production default 30 min)")
    p.add_argument("--only", type=_services, default=stack.SERVICES, metavar="collector,inference,...",
                   help="start only these services (e.g. collector,inference,miner: an assistant stack "
                        "without the trainer); default: all")
    p.add_argument("--no-auth", action="store_true",
                   help="the gRPC services want no API key (by default one is generated into stack.json)")
    p.set_defaults(func=_up)
    p = sub.add_parser("keys", help="API keys for the keys file (LOOPWISE_API_KEYS_FILE)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("new", help="a new random key and its hash").set_defaults(func=_keys)
    keys_sub.add_parser("hash", help="the hash of a key read from standard input").set_defaults(func=_keys)
    p = sub.add_parser("status", help="show the local stack")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)
    sub.add_parser("down", help="stop the local stack").set_defaults(func=_down)
    p = sub.add_parser("demo", help="sample MovieLens traffic through the stack")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    p.add_argument("--assistant-rounds", type=int, default=4,
                   help="rounds of simulated voice-assistant users (0: skip the assistant loop)")
    p.add_argument("--assistant-users", type=int, default=4000)
    p.add_argument("--rate", type=float, default=50.0,
                   help="Rank calls per second (0: as fast as possible); at 50/s the trainer publishes "
                        "new versions while the replay runs")
    p.set_defaults(func=_demo)
    p = sub.add_parser("model", help="list, show, promote or roll back model versions")
    from loopwise.tools import models_cmd

    models_cmd.add_arguments(p)
    p.set_defaults(func=_model)
    p = sub.add_parser("rules", help="live rewrite rules; block or unblock sources and targets")
    from loopwise.tools import rules_cmd

    rules_cmd.add_arguments(p)
    p.set_defaults(func=_rules)
    p = sub.add_parser("replay", help="replay a logged dataset through a running stack")
    replay_sub = p.add_subparsers(dest="dataset", required=True)
    p = replay_sub.add_parser("obd", help="the Open Bandit Dataset sample (obp 0.4.1 wheel)")
    p.add_argument("--policy", choices=("bts", "random"), default="bts")
    p.add_argument("--campaign", choices=("all", "men", "women"), default="all")
    p.add_argument("--rounds", type=int, default=None, help="replay only the first N rounds")
    p.add_argument("--speedup", type=float, default=3000.0,
                   help="pace on the sample's clock, X times real time (0: as fast as possible)")
    p.set_defaults(func=_replay)
    p = sub.add_parser("simulate", help="drive a running stack with simulated users")
    simulate_sub = p.add_subparsers(dest="simulation", required=True)
    p = simulate_sub.add_parser("assistant", help="users of a movie-playing voice assistant (MovieLens titles)")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (before --time-scale)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiplies every simulated gap (0.1: ten times denser; scale the miner's session gap too)")
    p.add_argument("--no-pace", dest="pace", action="store_false",
                   help="send as fast as possible (time stamps ending now) instead of in real time")
    p.add_argument("--tenant", default=None, help="tenant (default: the stack's first)")
    p.set_defaults(func=_simulate)
    _root_after_subcommands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
