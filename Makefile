# The README's two commands. Each one installs what it needs first (scripts/bootstrap.sh).
.PHONY: demo test bootstrap lint

bootstrap:
	@scripts/bootstrap.sh

# Main job on the embedded default: start the stack, push a generated film and live event through the pipeline.
demo: bootstrap
	.venv/bin/mediafm demo

# Whole test suite: lint, unit tests, then the integration tests on a real Kafka + Triton.
# pytest's exit code 5 (no tests collected) fails like any other failure.
test: bootstrap lint
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check mediafm streams trainer tests bench model_repository
