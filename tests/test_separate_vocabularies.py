"""End to end on separate source and target vocabularies (s2s-preprocess --separate_vocabs):
train, evaluate, average, export and translate, for both model families."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import toy_data
from configs import lstm_attention, tiny
from launch import evaluator, export_lib, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def family_config(family: str):
    if family == "transformer":
        config = tiny.get_config()
    else:
        config = lstm_attention.get_config()
        config.model.embed_dim, config.model.hidden_dim = 16, 32
        config.model.num_encoder_layers = config.model.num_decoder_layers = 1
        config.model.dropout = 0.0
        config.data.tokens_per_batch = 256
        config.decode.beam_size = 2
    config.train.num_steps = 400
    config.train.checkpoint_every_steps = 200
    config.train.label_smoothing = 0.0
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 10
    config.data.static_shapes = True
    return config


@pytest.fixture(scope="module", params=["transformer", "lstm_attention"])
def trained(request, tmp_path_factory):
    """(data_dir, workdir, family): 400 steps of the copy task, lower case in, upper case
    out, each side with its own SentencePiece model of its own size."""
    root = tmp_path_factory.mktemp(f"separate-{request.param}")
    data_dir = toy_data.make_toy_data_dir(str(root / "data"), separate_vocabs=True)
    trainer.train(family_config(request.param), workdir=str(root / "work"),
                  data_dir=data_dir, strategy=tf.distribute.get_strategy())
    return data_dir, str(root / "work"), request.param


def run_python(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300, **kwargs)


def test_the_model_has_one_table_per_side_sized_by_its_vocabulary(trained):
    data_dir, workdir, _ = trained
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["data"]["vocabulary_layout"] == "separate"
    assert (saved["data"]["source_vocab_size"], saved["data"]["target_vocab_size"]) == (13, 16)
    assert saved["model"]["share_embeddings"] is False and saved["model"]["tie_output"] is True
    run = evaluator.load_run(workdir=workdir, data_dir=data_dir)
    assert run.model.source_embedding.table.shape[0] == 13
    assert run.model.target_embedding.table.shape[0] == 16


def test_evaluation_and_the_exported_saved_model_agree(trained, tmp_path):
    data_dir, workdir, _ = trained
    row = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev")[0]
    assert row["step"] == 400 and row["token_accuracy"] > 80 and row["chrf"] > 50, row
    hyps = open(os.path.join(workdir, "eval", "dev", "hyp-400.txt")).read().splitlines()
    assert len(hyps) == 32 and all(set(h) <= set(" ABCDEFGHXYZ") for h in hyps)
    saved_model = export_lib.resolve(evaluator.export_root(workdir))
    assert export_lib.read_manifest(saved_model)["vocabulary"] == {
        "layout": "separate", "source_vocab_size": 13, "target_vocab_size": 16}
    # A fresh process with no project code: both SentencePiece models are in the export.
    sources = [s for s, _ in toy_data.make_pairs(32, seed=1)]
    script = ("import json, sys, tensorflow as tf, tensorflow_text\n"
              "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
              "out = serve(inputs=tf.constant(json.loads(sys.argv[2])))\n"
              "print(json.dumps([t.decode() for t in out['translations'].numpy()]))\n")
    result = subprocess.run([sys.executable, "-c", script, saved_model, json.dumps(sources)],
                            capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                            env=dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == hyps


def test_the_translate_cli_reads_the_export(trained, tmp_path):
    data_dir, workdir, _ = trained
    export_dir = str(tmp_path / "exported")
    result = run_python(["-m", "launch.export", f"--workdir={workdir}",
                         f"--data_dir={data_dir}", f"--export_dir={export_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = ["abc", "h ga", "bad cafe"]
    result = run_python(["-m", "launch.translate", f"--model={export_dir}"],
                        input="".join(line + "\n" for line in inputs))
    assert result.returncode == 0, result.stderr[-3000:]
    serve = export_lib.load_translator(export_lib.resolve(export_dir))
    expected = [t.decode() for t in serve(inputs=tf.constant(inputs))["translations"].numpy()]
    assert result.stdout.splitlines() == expected
    assert all(line and set(line) <= set(" ABCDEFGHXYZ") for line in expected)


def test_checkpoint_averaging_reads_both_tables(trained):
    data_dir, workdir, _ = trained
    run = evaluator.load_run(workdir=workdir, data_dir=data_dir)
    paths = [os.path.join(workdir, "checkpoints", f"ckpt-{step}") for step in (200, 400)]
    tables = []
    for path in paths:
        evaluator.restore(run, [path])
        tables.append(run.model.target_embedding.table.numpy())
    evaluator.restore(run, paths)
    np.testing.assert_allclose(run.model.target_embedding.table.numpy(),
                               (tables[0] + tables[1]) / 2, rtol=1e-6)


@pytest.mark.parametrize("trained", ["transformer"], indirect=True)  # the one it converts
def test_ctranslate2_export_keeps_each_sides_vocabulary(trained, tmp_path):
    import ctranslate2
    import sentencepiece as spm

    data_dir, workdir, _ = trained
    export_dir = str(tmp_path / "ct2")
    result = run_python(["-m", "launch.export", f"--workdir={workdir}",
                         f"--data_dir={data_dir}", f"--export_dir={export_dir}",
                         "--format=ctranslate2"])
    assert result.returncode == 0, result.stderr[-3000:]
    source = spm.SentencePieceProcessor(
        model_file=os.path.join(data_dir, "spm_source.model"))
    target = spm.SentencePieceProcessor(
        model_file=os.path.join(data_dir, "spm_target.model"))
    translator = ctranslate2.Translator(export_lib.resolve(export_dir), device="cpu")
    [output] = translator.translate_batch([source.encode("abc h", out_type=str)], beam_size=2)
    assert target.decode(output.hypotheses[0]) == "ABC H"
