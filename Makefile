# The two commands of the README: `make run` and `make test`. Both set everything up first.
VENV := .venv
READY := $(VENV)/.ready

.PHONY: run test lint bench clean

$(READY): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $@

## run: set up, then run the gateway on simulated hardware with the demo site (web app on http://127.0.0.1:8080/)
run: $(READY)
	$(VENV)/bin/luckey-gateway run $(if $(CONFIG),--config $(CONFIG),)

## test: set up, then lint, type-check and run the whole test suite
test: $(READY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

lint: $(READY)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

## bench: run every benchmark (each prints one JSON object as its last line)
bench: $(READY)
	$(VENV)/bin/python -m bench decision
	$(VENV)/bin/python -m bench e2e
	$(VENV)/bin/python -m bench delta
	$(VENV)/bin/python -m bench outbox
	$(VENV)/bin/python -m bench snapshot
	$(VENV)/bin/python -m bench credentials

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
