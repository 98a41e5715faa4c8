# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_run
DEMO_EXPORT = $(DEMO_DIR)/work/export/final
BIN := $(VENV)/bin

.PHONY: setup demo retrain-demo retrain-airflow test bazel-test image clean

setup: $(STAMP)

# constraints.txt pins the versions CI and the README results were produced with.
$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

# tests/test_report.py opens the evaluation report in headless Chromium (Debian's package).
# Two test processes share the CPU (whole files each), then the `serial` tests (timed
# reactions, real worker groups; tests/conftest.py) run alone.
test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not serial" tests
	$(PY) -m pytest -q -m serial tests

# Every BUILD target built and every test file run through Bazel (Debian's Bazel 4.2.3,
# nothing fetched; BUILD's header says how): the virtualenv's interpreter runs the targets.
bazel-test: $(STAMP)
	(command -v bazel >/dev/null && test -d /usr/share/bazel/platforms) || \
	    (apt-get update && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y bazel-bootstrap bazel-platforms)
	command -v chromium >/dev/null || (apt-get update && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	echo "build --python_path=$(abspath $(PY))" > .bazelrc.venv
	bazel test --local_test_jobs=2 //...

# The quickstart: CMUdict grapheme-to-phoneme with the bench-size Transformer, within 20
# min on 2 cores. Its training steps fit that budget: configs/g2p.py's (5400) where the
# CPU multiplies bfloat16 natively (AVX512_BF16/AMX), DEMO_STEPS_FLOAT32 in float32
# elsewhere (about 1.5x slower per step). It exports the final checkpoint and scores test only: a dev
# evaluation (the README's next command) costs another 1.5 min. Rerunning resumes:
# preprocessing is kept once complete, training continues.
DEMO_STEPS_FLOAT32 ?= 3300
demo: $(STAMP)
	test -f $(DEMO_DIR)/data/_COMPLETED || $(BIN)/s2s-preprocess --train=cmudict \
	    --split_fractions=dev:0.05,test:0.05 --output_dir=$(DEMO_DIR)/data --overwrite
	steps_flag=$$($(PY) -c 'from launch.precision import cpu_has_native_bfloat16 as native; \
	    print("" if native() else "--config.train.num_steps=$(DEMO_STEPS_FLOAT32)")') && \
	$(BIN)/s2s-train --config=configs/g2p.py --data_dir=$(DEMO_DIR)/data \
	    --workdir=$(DEMO_DIR)/work $$steps_flag
	$(BIN)/s2s-export --workdir=$(DEMO_DIR)/work --data_dir=$(DEMO_DIR)/data \
	    --export_dir=$(DEMO_EXPORT)
	$(BIN)/s2s-evaluate --workdir=$(DEMO_DIR)/work --data_dir=$(DEMO_DIR)/data --split=test
	@echo
	@echo "Exported to $(DEMO_EXPORT) (s2s-export --resolve=$(DEMO_EXPORT) prints its SavedModel directory). Try it:"
	@echo "  echo 'p i p e l i n e' | $(BIN)/s2s-translate --model=$(DEMO_EXPORT)"

# Scheduled retraining, run here: two iterations on CMUdict (the second adds held-back
# words, keeps the published tokenizer, warm-starts from the published model and publishes
# only if its dev WER is lower); prints the published versions and their dev WER.
RETRAIN_DIR ?= retrain_demo
retrain-demo: $(STAMP)
	$(PY) -m launch.cloud.retrain_demo --dir=$(RETRAIN_DIR)

# The same loop under a real Airflow, locally: an SQLite metadata DB in
# $(RETRAIN_DIR)/airflow, then `airflow dags test` of the DAG with a local-backend settings
# file (default: the demo's second iteration; run retrain-demo first, or pass your own).
RETRAIN_SETTINGS ?= $(RETRAIN_DIR)/it2.json
AIRFLOW_ENV = AIRFLOW_HOME=$(abspath $(RETRAIN_DIR))/airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(abspath launch/cloud) AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///$(abspath $(RETRAIN_DIR))/airflow/airflow.db \
	S2S_RETRAIN_SETTINGS=$(abspath $(RETRAIN_SETTINGS))
retrain-airflow: $(STAMP)
	mkdir -p $(RETRAIN_DIR)/airflow
	$(AIRFLOW_ENV) $(BIN)/airflow db migrate
	$(AIRFLOW_ENV) $(BIN)/airflow dags test s2s_retrain $$(date -u +%Y-%m-%dT%H:%M:%S)

# The one image every cloud launcher runs (README: Launching on Google Cloud).
IMAGE ?= s2s-pipeline:dev
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(RETRAIN_DIR) .pytest_cache
