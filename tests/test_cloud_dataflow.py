"""Dataflow submission of s2s-preprocess (launch/cloud/dataflow.py)."""

import io
import re
import shlex
from contextlib import redirect_stdout

import pytest

import cli_errors
from launch.cloud import dataflow

ARGS = ["--project=proj", "--region=us-central1", "--temp_location=gs://b/tmp",
        "--train=tsv:gs://b/raw/train.tsv", "--output_dir=gs://b/data/ende"]


def dry_run(*args) -> list[str]:
    out = io.StringIO()
    with redirect_stdout(out):
        dataflow.main([*ARGS, "--dry-run", *args])
    [line] = out.getvalue().splitlines()
    return shlex.split(line)


def test_preprocess_gets_the_dataflow_runner_flags():
    argv = dry_run("--split_fractions=dev:0.05,test:0.05", "--job_name=s2s-ende",
                   "--sdk_container_image=img:dataflow", "--max_num_workers=20", "--",
                   "--vocab_size=16000")
    assert argv == ["s2s-preprocess", "--train=tsv:gs://b/raw/train.tsv",
                    "--split_fractions=dev:0.05,test:0.05", "--output_dir=gs://b/data/ende",
                    "--vocab_size=16000", "--runner=DataflowRunner", "--project=proj",
                    "--region=us-central1", "--temp_location=gs://b/tmp",
                    "--job_name=s2s-ende", "--sdk_container_image=img:dataflow",
                    "--max_num_workers=20"]


def test_without_an_image_the_code_ships_as_setup_py_and_the_name_is_generated():
    argv = dry_run("--dev=tsv:gs://b/dev.tsv", "--test=tsv:gs://b/test.tsv")
    assert "--setup_file=./setup.py" in argv
    assert not any(a.startswith("--sdk_container_image") for a in argv)
    assert argv[2:4] == ["--dev=tsv:gs://b/dev.tsv", "--test=tsv:gs://b/test.tsv"]
    [name] = [a.split("=", 1)[1] for a in argv if a.startswith("--job_name=")]
    assert re.fullmatch(r"s2s-preprocess-ende-\d{8}-\d{6}", name)


def test_job_names_are_legal_for_dataflow():
    for output in ("gs://b/Data_Set.v2/", "gs://b/", "gs://b/" + "x" * 100):
        name = dataflow.job_name(output, now=0)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63


def test_s2s_preprocess_and_beam_accept_every_flag():
    """Our flags parse as s2s-preprocess flags, the rest as Beam DataflowRunner options."""
    from absl import flags
    from apache_beam.options.pipeline_options import (GoogleCloudOptions, SetupOptions,
                                                      StandardOptions, WorkerOptions)
    from pipeline import preprocess
    argv = dry_run("--split_fractions=dev:0.05,test:0.05", "--setup_file=./setup.py",
                   "--max_num_workers=5", "--", "--vocab_size=16000")
    values = flags.FlagValues()
    preprocess.define_flags(values)
    rest = preprocess.parse_flags(argv, flag_values=values)
    assert values.train == ["tsv:gs://b/raw/train.tsv"] and values.vocab_size == 16000
    assert values.output_dir == "gs://b/data/ende"
    options = preprocess.pipeline_options_from_argv(rest[1:])
    cloud = options.view_as(GoogleCloudOptions)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert (cloud.project, cloud.region, cloud.temp_location) == ("proj", "us-central1",
                                                                  "gs://b/tmp")
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    assert options.view_as(WorkerOptions).max_num_workers == 5


@pytest.mark.parametrize("args, message", [
    (["--split_fractions=dev:0.1", "--dev=tsv:d"], "either --dev and --test"),
    (["--split_fractions=dev:0.1", "--sdk_container_image=i", "--setup_file=s"],
     "exactly one of --sdk_container_image and --setup_file"),
    (["--split_fractions=dev:0.1", "--temp_location=/tmp"], "--temp_location='/tmp' must be"),
    (["--split_fractions=dev:0.1", "--output_dir=out"], "--output_dir='out' must be"),
])
def test_bad_input_is_one_line(args, message, capsys):
    cli_errors.assert_one_line_error(capsys, prog=dataflow.PROG, main=dataflow.main,
                                     argv=[*ARGS, *args, "--dry-run"], message=message)
