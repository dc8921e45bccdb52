"""``python -m stmixer.config [--config-file F] [KEY VALUE ...]``: print the config reference or a merged config."""

import argparse
import sys

from . import ConfigError, get_cfg
from .reference import reference_markdown


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m stmixer.config",
        description="Print every config key with its default and meaning (markdown), "
        "or with --config-file the merged config as YAML.",
    )
    parser.add_argument("--config-file", default="", help="merge this YAML file and print the result")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    cfg = get_cfg()
    if not args.config_file and not args.opts:
        print(reference_markdown(cfg))
        return
    try:
        if args.config_file:
            cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(cfg.dump(), end="")


if __name__ == "__main__":
    main()
