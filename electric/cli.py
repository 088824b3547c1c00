"""Command line: ``electric [settings]`` runs the service; commands do operator tasks.

    electric --config conf/electric.ini                     run the replication service
    electric [settings] migrate VSN                         apply a migration to every connector
    electric [settings] gen-token USER_ID [...]             mint Satellite auth tokens
    electric [settings] connector remove NAME               drop a connector's slot, publication
                                                            and subscription on its Postgres
    electric [settings] verify                              do the connectors hold the same rows?
    electric [settings] import-store                        upgrade a first-release VAXINE_DATA_DIR
    electric [settings] backup-store DEST                   online copy of the embedded store
    electric vaxine --data-dir D [...]                      run the embedded Vaxine store alone

Settings (``--config FILE``, ``--status-port`` …) may stand before or after the command.
Start-up problems (bad settings, unreadable offset file) print one line and exit with code 2.
"""

from __future__ import annotations

import sys

EXIT_CONFIG = 2


def _fail(message: str) -> int:
    print(f"electric: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _load_settings(argv: list[str]):
    from electric import config

    try:
        return config.load(argv, parser=_service_parser())
    except config.ConfigError as exc:
        raise SystemExit(_fail(f"invalid setting {exc}")) from None


def run_service(argv: list[str]) -> int:
    # Patch first, before anything imports socket/ssl/threading users.
    from gevent import monkey

    monkey.patch_all()
    from electric import config, log

    settings = _load_settings(argv)
    if settings.print_config:
        for env, value in config.printable(settings):
            print(f"{env}={value}")
        return 0
    log.setup(settings.log_level, settings.log_file, settings.log_format,
              settings.log_rotation, settings.log_retention)
    from electric.postgres import green

    green.make_green()
    from loguru import logger

    from electric.app import Application, StartupError

    app = Application(settings)
    try:
        return app.serve_forever()
    except StartupError as exc:
        logger.critical(str(exc))  # one line, on the console and in LOG_FILE
        app.shutdown()
        return EXIT_CONFIG
    except Exception:
        logger.exception("Electric failed to start")
        app.shutdown()
        return 1


# name -> (module, function, one line for --help)
SUBCOMMANDS = {
    "migrate": ("electric.migrate_cli", "main",
                "apply MIGRATIONS_DIR/<vsn> to every connector through the running Electric"),
    "gen-token": ("electric.satellite.tokens", "main",
                  "mint Satellite auth tokens for the configured auth mode"),
    "connector": ("electric.connector_cli", "main",
                  "connector remove NAME: drop its slot, publication and subscription"),
    "vaxine": ("electric.vaxine.embedded.server", "main",
               "run the embedded Vaxine store on its own (several Electrics share it)"),
    "verify": ("electric.verify", "main",
               "compare row counts and checksums of the shared tables across connectors"),
    "import-store": ("electric.store.legacy", "main",
                     "upgrade a first-release VAXINE_DATA_DIR (vaxine.log) to the store"),
    "backup-store": ("electric.store.backup", "main",
                     "backup-store DEST: online, consistent copy of the embedded store"),
}

COMMANDS_HELP = "commands (settings may come before or after the command):\n" + "\n".join(
    f"  {name:<11} {line}" for name, (_m, _f, line) in SUBCOMMANDS.items()
) + "\n\nwithout a command Electric runs the replication service; " \
    "'electric COMMAND --help' shows a command's own options."


def _service_parser():
    from electric import config

    parser = config.build_parser()
    parser.usage = "%(prog)s [settings] [COMMAND ...]"
    parser.description = f"{parser.description}\n\n{COMMANDS_HELP}"
    return parser


def _takes_value(arg: str) -> bool:
    """Whether a global option consumes the next argument (``--status-port 5050``)."""
    from electric import config

    if "=" in arg:
        return False
    return arg in ("-c", "--config") or any(arg == flag for flag, *_ in config.OPTIONS)


def split_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """Find the command among ``argv``; settings may stand before or after it.

    Returns ``(command, the other arguments)``; ``(None, argv)`` when there is none. A stray
    word that is not a command is reported in one line (exit 2).
    """
    i = 0
    after_unknown_option = False
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if arg.startswith("-"):
            i += 2 if _takes_value(arg) else 1
            # A word after an option we do not know may be its value: argparse names the
            # option then, which says more than "unknown command".
            after_unknown_option = "=" not in arg and not _takes_value(arg) and arg not in (
                "-h", "--help", "--print-config")
            continue
        if arg in SUBCOMMANDS:
            return arg, argv[:i] + argv[i + 1:]
        if after_unknown_option:
            after_unknown_option = False
            i += 1
            continue
        raise SystemExit(_fail(f"unknown command {arg!r}; commands: {', '.join(SUBCOMMANDS)} "
                               "(see electric --help)"))
    return None, argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = split_command(argv)
    if command is not None:
        module_name, func, _help = SUBCOMMANDS[command]
        import importlib

        from gevent import monkey

        monkey.patch_all()

        return int(getattr(importlib.import_module(module_name), func)(rest) or 0)
    return run_service(argv)


if __name__ == "__main__":
    sys.exit(main())
