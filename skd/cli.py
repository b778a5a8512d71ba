"""The `skd` command line. Each stage is one command; `main` turns user errors into one line + exit 2.

Commands are loaded on first use: a command's module (and with it torch, transformers, ...) is imported
only when that command runs, so `skd --help`, `skd info` and `skd query` start in well under a second.
The help listing comes from COMMANDS; a test keeps each line equal to its command's own short help.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Annotated

# rich progress bars are ours; the Hugging Face libraries' tqdm bars would interleave with them
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")  # its plugin search scans every installed package

import typer
import typer.core

# typer (0.26+) vendors click: its commands raise its own exceptions
from typer._click import core as click
from typer._click.exceptions import ClickException, UsageError

from store.errors import SkdError

if TYPE_CHECKING:
    from click import HelpFormatter

# name: (module under skd/, short help shown by `skd --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("cmd_store", "Create a corpus database (or migrate an existing one to this skd's schema)."),
    "info": ("cmd_store", "Schema version and counts per table, per kind, per relation and per domain."),
    "ingest": ("cmd_store", "Ingest items from JSONL, CSV, parquet or ATOMIC-2020 TSV; bad rows are reported, good "
                            "rows kept."),
    "query": ("cmd_store", "Query the corpus with SQL on a connection that cannot write."),
    "labels": ("cmd_store", "Human or LLM judgements used to train critics."),
    "generate": ("cmd_generate", "Overgenerate with a teacher: every completion is stored (parsed or not), every "
                                 "item with provenance."),
    "critic": ("cmd_critic", "Critic models: train from labels, score the corpus, evaluate."),
    "embed": ("cmd_corpus", "Embed items (normalised) into the embeddings table; items already embedded with MODEL "
                            "are skipped."),
    "dedup": ("cmd_corpus", "Cluster duplicates; one representative per cluster; results in dedup_clusters per "
                            "setting."),
    "stats": ("cmd_snapshot", "Diversity statistics of the corpus, a --where slice, or a snapshot; each states its "
                              "sample size."),
    "snapshot": ("cmd_snapshot", "Immutable named slices of the corpus: create, list, show, diff."),
    "export": ("cmd_snapshot", "Write a snapshot as a Hugging Face dataset folder (with a dataset card), parquet or "
                               "JSONL."),
    "push": ("cmd_snapshot", "Upload a snapshot to the Hugging Face Hub as a dataset, in one commit naming its hash."),
    "train": ("cmd_train", "Fine-tune a student on a snapshot (TRL SFT, optional LoRA); resumes from its last "
                           "checkpoint."),
    "eval": ("cmd_train", "Generate for held-out inputs and measure: references overlap, exact match, critic "
                          "acceptance,..."),
    "compare": ("cmd_train", "Students and teachers side by side: one row per evaluation."),
    "serve": ("cmd_serve", "Browse, query, compare and annotate the corpus in a browser (a local web app)."),
    "report": ("cmd_serve", "A snapshot as one self-contained HTML file: card, funnel, statistics, critic, "
                            "evaluations."),
    "run": ("cmd_run", "Run a pipeline: ingest, generate, critic, score, embed, dedup, snapshot, export, train, eval."),
}
# Options every command takes; given before the command they reach it through its environment variable.
GLOBAL_ENV = {"db": "SKD_DB", "json": "SKD_JSON", "quiet": "SKD_QUIET", "wait": "SKD_WAIT"}


def load_command(name: str) -> click.Command:
    """The click command `name`, built by typer from the module that registers it."""
    module = importlib.import_module(f"skd.{COMMANDS[name][0]}")
    sub = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    module.register(sub)
    built = typer.main.get_command(sub)  # a group, or the command itself when the module has only one
    command = built.commands[name] if hasattr(built, "commands") else built
    command.name = name
    return command


class LazyGroup(typer.core.TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return load_command(name) if name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


app = typer.Typer(cls=LazyGroup, name="skd", rich_markup_mode=None, pretty_exceptions_enable=False,
                  add_completion=False, context_settings={"help_option_names": ["--help", "-h"]},
                  help="Symbolic knowledge distillation: generate, filter, dedup, snapshot, export and train.")


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option(help="Corpus database file [default: ./skd.duckdb].",
                                           show_default=False)] = None,
    json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    wait: Annotated[float | None, typer.Option(min=0, show_default=False,
                                               help="Seconds to wait for a corpus another process holds "
                                                    "[default: 300].")] = None,
) -> None:
    """Global options, given before the command, reach it through its environment variable."""
    for name, value in (("db", db), ("json", json or None), ("quiet", quiet or None), ("wait", wait)):
        if value is not None:
            os.environ[GLOBAL_ENV[name]] = "1" if value is True else str(value)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def main(argv: list[str] | None = None) -> None:
    say_store_notes()
    try:
        code = typer.main.get_command(app).main(args=argv, prog_name="skd", standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        print("skd: aborted", file=sys.stderr)
        sys.exit(130)
    except UsageError as e:
        print(f"skd: error: {one_line(e.format_message())}"
              + (f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""), file=sys.stderr)
        sys.exit(2)
    except ClickException as e:
        print(f"skd: error: {one_line(e.format_message())}", file=sys.stderr)
        sys.exit(2)
    except SkdError as e:  # a user's error (bad input, config, model, lock) is one line
        print(f"skd: error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("skd: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def say_store_notes() -> None:
    """The store's notes (waiting for a lock and who holds it) as `skd: ...` lines on stderr."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("skd: %(message)s"))
    log = logging.getLogger("skd")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def one_line(message: str) -> str:
    from store.redact import redact

    return redact(" ".join(message.split()))


if __name__ == "__main__":
    main()
