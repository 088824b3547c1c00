"""Command line: ``electric [settings]`` runs the service; sub-commands do operator tasks.

    electric --config conf/electric.ini            run the replication service
    electric vaxine --data-dir D [...]             run the embedded Vaxine store standalone
    electric gen-token [settings] USER_ID [...]    mint Satellite auth tokens
    electric migrate [settings] VSN                apply a migration to every connector (via the API)
    electric import-store [settings]               upgrade a first-release VAXINE_DATA_DIR
    electric backup-store [settings] DEST          online copy of the embedded store

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
        return config.load(argv)
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


SUBCOMMANDS = {
    "vaxine": ("electric.vaxine.embedded.server", "main"),
    "gen-token": ("electric.satellite.tokens", "main"),
    "migrate": ("electric.migrate_cli", "main"),
    "import-store": ("electric.store.legacy", "main"),
    "backup-store": ("electric.store.backup", "main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module_name, func = SUBCOMMANDS[argv[0]]
        import importlib

        from gevent import monkey

        monkey.patch_all()

        return int(getattr(importlib.import_module(module_name), func)(argv[1:]) or 0)
    return run_service(argv)


if __name__ == "__main__":
    sys.exit(main())
