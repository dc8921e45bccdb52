"""``python -m stmixer.config [--config-file F] [KEY VALUE ...]``: print the config reference or a merged config."""

import argparse

from ..errors import exit_on_user_error
from . import get_cfg, load_config
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
    if not args.config_file and not args.opts:
        print(reference_markdown(get_cfg()))
        return
    with exit_on_user_error():
        cfg = load_config(args.config_file, args.opts, freeze=False)
    print(cfg.dump(), end="")


if __name__ == "__main__":
    main()
