import json

from tests.conftest import write_csv_source
from typer.testing import CliRunner

from recalign.cli import app

runner = CliRunner()


def prepared(tmp_path):
    items = [(c, f"Item {c}", "B") for c in "abcdefgh"]
    log = [(f"u{u}", "abcdefgh"[(u + t) % 8], t) for u in range(12) for t in range(6)]
    source = write_csv_source(tmp_path / "src", items, log)
    result = runner.invoke(app, ["data", "prepare", "-f", "csv", "--source", str(source), "--out",
                                 str(tmp_path / "data"), "--min-item", "1"])
    assert result.exit_code == 0, result.output
    return tmp_path / "data"


def test_eval_json_reports_each_baseline_with_named_metrics(tmp_path):
    data = prepared(tmp_path)
    result = runner.invoke(app, ["eval", "--data", str(data), "--k", "1,5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["models"]) == {"popularity", "random", "markov"}
    assert set(report["models"]["markov"]["metrics"]) == {"HR@1", "HR@5", "NDCG@1", "NDCG@5", "MRR@1", "MRR@5"}
    # every user walks the 8 items in a cycle: the last item determines the next one
    assert report["models"]["markov"]["metrics"]["HR@1"] == 1.0
    assert report["protocol"] == {"kind": "full", "exclude_history": False, "n_negatives": 19, "seed": 0,
                                  "split": "test", "ks": [1, 5], "ties": "pessimistic"}


def test_eval_table_and_sampled_protocol(tmp_path):
    data = prepared(tmp_path)
    result = runner.invoke(app, ["eval", "--data", str(data), "--protocol", "sampled", "--negatives", "2"])
    assert result.exit_code == 0, result.output
    assert "NDCG@10" in result.output and "markov" in result.output
    sampled = runner.invoke(app, ["eval", "--data", str(data), "--protocol", "sampled", "--negatives", "2", "--k",
                                  "1,3", "--json"])
    metrics = json.loads(sampled.output)["models"]["markov"]["metrics"]
    assert metrics["HR@1"] == 1.0 and metrics["HR@3"] == 1.0  # the cycle makes the next item certain


def test_bad_arguments_fail_with_a_message(tmp_path):
    data = prepared(tmp_path)
    for args, message in ((["--k", "x"], "comma-separated"), (["--baselines", "oracle"], "unknown baseline"),
                          (["--split", "dev"], "no split"), (["--protocol", "both"], "protocol")):
        result = runner.invoke(app, ["eval", "--data", str(data), *args])
        assert result.exit_code == 1 and message in result.output, result.output
    result = runner.invoke(app, ["data", "prepare", "-f", "parquet", "--source", str(tmp_path), "--out", "x"])
    assert result.exit_code == 1 and "unknown format" in result.output


def command_paths(command, path=()):
    """Every command and group below ``command`` (a click command), as argument lists."""
    yield list(path)
    for name, sub in getattr(command, "commands", {}).items():
        yield from command_paths(sub, (*path, name))


def test_every_help_reads_well_at_80_columns_and_piped():
    """Plain help (what a pipe gets, too): no line past 80 columns, no box drawing, and option texts in a wide
    column; rich's boxed tables indented them 50-60 columns, one or two words a line."""
    import typer

    paths = list(command_paths(typer.main.get_command(app)))
    assert ["data", "download"] in paths and ["llm", "train"] in paths and len(paths) > 25
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0 and result.output.startswith("Usage:"), (path, result.output)
        lines = result.output.splitlines()
        assert max(map(len, lines)) <= 80, (path, max(lines, key=len))
        assert not set(result.output) & set("│╭╮╰╯─"), path
        indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
        assert max(indents) <= 34, (path, result.output)
