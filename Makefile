# Electric (Python) developer tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard proto/*.proto)
PB_OUT := electric/pb

.PHONY: help deps compile tests tests-vaxine dev lint chaos bench start_dev_env stop_dev_env reset_dev_env shell apply_migration

help:
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

STAMP := $(VENV)/.installed

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

deps: $(STAMP) compile ## create the virtualenv and install Electric with its dev dependencies

compile: $(STAMP) ## generate protobuf modules from proto/ into electric/pb/
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PB_OUT) $(PROTOS)

tests: compile ## run the test suite (real Postgres, embedded Vaxine, Electric as a process)
	$(PY) -m pytest -q -m "not chaos" $(PYTEST_ARGS)

tests-vaxine: compile ## the wire golden script and Postgres/Satellite end-to-end scenarios against a Vaxine: make tests-vaxine VAXINE=host:api_port:replication_port
	@test -n "$(VAXINE)" || { echo "usage: make tests-vaxine VAXINE=host:api_port:replication_port"; exit 2; }
	ELECTRIC_TEST_VAXINE=$(VAXINE) $(PY) -m pytest -q -m vaxine_suite $(PYTEST_ARGS)

dev: deps start_dev_env shell ## everything: venv, two dev Postgres clusters, Electric in the foreground

lint: ## ruff
	$(VENV)/bin/ruff check electric tests bench

chaos: compile ## long fault-injection run
	$(PY) -m pytest -q -m chaos

bench: compile ## benchmarks, results in bench/results/
	$(PY) -m bench

start_dev_env: $(STAMP) ## two local Postgres clusters on 54321 and 54322 (no Docker)
	$(PY) -m electric.devenv start

stop_dev_env: ## stop the dev clusters
	$(PY) -m electric.devenv stop

reset_dev_env: ## stop the dev clusters and delete .dev_env/ (databases, Electric's dev store and offset file)
	$(PY) -m electric.devenv reset

shell: compile ## run Electric in the foreground against the dev env, embedded Vaxine
	bin/electric --config conf/electric.ini

apply_migration: ## apply MIGRATIONS_DIR/<name> to every connector: make apply_migration name=...
	@test -n "$(name)" || { echo "usage: make apply_migration name=<vsn>"; exit 2; }
	bin/electric migrate --config conf/electric.ini $(name)
