# Two set-up commands do everything: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers: one per logical core; tests/conftest.py keeps on one worker what must be.
WORKERS ?= logical
PYTEST  := $(BIN)/pytest -n $(WORKERS) --dist loadgroup --no-loadscope-reorder

.PHONY: install browser demo test test-fast lint deploy-lint typecheck pytest package bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,sandbox]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for tests/test_report_browser.py: installed only when missing, so a machine
# that has it pays one `command -v`. Installing needs root (CI runs as root); anyone else is told.
BROWSER_PACKAGES := chromium fonts-dejavu-core
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make browser: chromium is missing and installing it needs root:" >&2; \
	    echo "  sudo apt-get install -y --no-install-recommends $(BROWSER_PACKAGES)" >&2; \
	    exit 1; \
	  fi; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends $(BROWSER_PACKAGES); \
	}

demo: $(STAMP)
	$(BIN)/rotator demo

lint: $(STAMP)
	$(BIN)/ruff check lambda_decrypt rotator rotator_build tests bench
	$(BIN)/ruff format --check lambda_decrypt rotator rotator_build tests bench
	$(BIN)/lint-imports

deploy-lint: $(STAMP)
	$(BIN)/cfn-lint deploy/template.yaml deploy/member.yaml

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) browser
	$(PYTEST)

# The fast tier: no HTTP to a sandbox, no child process, no wheel or zip build.
test-fast: $(STAMP)
	$(PYTEST) -m "not wire and not slow"

# Timed from before the install (a fresh clone installs first); the exit status is make's.
# ruff, import-linter and mypy are single-threaded: they run side by side, then pytest takes
# both cores. cfn-lint runs inside pytest (tests/test_deploy_template.py), not twice.
test:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory install && \
	$(MAKE) --no-print-directory -j2 --output-sync=target lint typecheck && \
	$(MAKE) --no-print-directory pytest; status=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s"; \
	exit $$status

package: $(STAMP)
	$(BIN)/rotator package --output build

bench: $(STAMP)
	$(BIN)/python bench/decrypt_bench.py
	$(BIN)/python bench/rotation_bench.py
	$(BIN)/python bench/report_bench.py
	$(BIN)/python bench/cli_bench.py
	$(BIN)/python bench/rewrap_bench.py
	$(BIN)/python bench/fleet_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
