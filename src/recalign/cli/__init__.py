"""The ``recalign`` command. Thin: it parses options and calls the packages, importing them lazily so that
``recalign --help`` stays fast."""

from __future__ import annotations

import typer

from ..threads import passive_openmp_if_contended
from .allmrec import allmrec_app
from .cf import cf_app
from .data import data_app
from .demo import demo
from .evaluate import evaluate_command
from .index import index_app
from .llm import llm_app, recommend_command
from .rl import llm_rl
from .run import list_recipes, report_command, run_command
from .serve import serve_command

# rich_markup_mode=None: click's plain help for every command (the mode passes down to the sub-commands), not rich's
# boxed tables, which squeeze each option's text into a narrow column at 80 columns and draw boxes into pipes.
app = typer.Typer(help="recalign: LLM-based generative recommendation aligned with collaborative and semantic "
                       "signals. Each sub-command is one stage of the pipeline; start with `recalign demo`.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(cf_app, name="cf")
app.add_typer(index_app, name="index")
llm_app.command("rl")(llm_rl)
app.add_typer(llm_app, name="llm")
app.add_typer(allmrec_app, name="allmrec")
app.command("recommend")(recommend_command)
app.command("eval")(evaluate_command)
app.command("demo")(demo)
app.command("serve")(serve_command)
app.command("run")(run_command)
app.command("recipes")(list_recipes)
app.command("report")(report_command)


def main() -> None:
    passive_openmp_if_contended()  # before any command loads torch (docs/benchmarks/threads.md)
    app()
