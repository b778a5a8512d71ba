"""The `skd` command line. Each stage is one command; `main` turns user errors into one line + exit 2."""

from __future__ import annotations

import os
import sys

# rich progress bars are ours; the Hugging Face libraries' tqdm bars would interleave with them
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import click
import typer

from store import SkdError

from . import cmd_corpus, cmd_critic, cmd_generate, cmd_run, cmd_snapshot, cmd_store, cmd_train

app = typer.Typer(
    name="skd",
    help="Symbolic knowledge distillation: generate, filter, dedup, snapshot, export and train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cmd_store.register(app)
cmd_generate.register(app)
cmd_critic.register(app)
cmd_corpus.register(app)
cmd_snapshot.register(app)
cmd_train.register(app)
cmd_run.register(app)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except SkdError as e:
        print(f"skd: error: {e}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("skd: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("skd: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
