# Two set-up commands do everything: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint deploy-lint typecheck pytest package bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,sandbox]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rotator demo

lint: $(STAMP)
	$(BIN)/ruff check lambda_decrypt rotator rotator_build tests bench
	$(BIN)/ruff format --check lambda_decrypt rotator rotator_build tests bench
	$(BIN)/lint-imports

deploy-lint: $(STAMP)
	$(BIN)/cfn-lint deploy/template.yaml

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint deploy-lint typecheck pytest

package: $(STAMP)
	$(BIN)/rotator package --output build

bench: $(STAMP)
	$(BIN)/python bench/decrypt_bench.py
	$(BIN)/python bench/rotation_bench.py
	$(BIN)/python bench/report_bench.py
	$(BIN)/python bench/cli_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
